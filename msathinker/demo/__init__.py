"""The demo: what lets a fresh clone run every stage on a CPU with no download, and nothing a real run needs.

- `tiny`: random-init Qwen2.5-Omni thinker checkpoints in the standard HF layout (and the "tiny-dc" stand-in for a
  pretrained base);
- `data`: the synthetic MSA datasets in the MMSA raw layout (demo_mosi, demo_sims);
- `rationale`: the rule-based rationale writer, a stand-in for the teacher (SFT `targets: rules`, RulesTeacher);
- `assets`: builds them on first use into the asset cache.

The real path (msathinker.assets, data_modules) imports this package only when a config names a demo asset.
The demo's DataModule (blank training clips) is data_modules.DemoDataModule.
"""
