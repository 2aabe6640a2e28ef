"""Peak memory of SFT steps with a 4-bit (NF4) base versus a full-precision (float32) base, both with LoRA, on the
same demo data and batch. Prints both peaks, their ratio, and where the bytes go; asserts nothing.

    python benchmarks/sft_memory.py [--presets small medium] [--steps 4] [--rounds 3] [--batch-size 4]

Each run is a fresh child process (SFTModule + MSADataModule + a Lightning Trainer, the code path of `fit`) whose
peak RSS is read with resource.getrusage (ru_maxrss, the whole process: interpreter, libraries, model load, data,
training). The child also reports the peak while training only (the kernel's high-water mark reset after the model
is built: /proc/self/clear_refs), the weight bytes of each part of the model, the AdamW state and the activations
saved for backward in the first step. Configurations alternate for --rounds rounds; medians are printed.

"small" is the quickstart's tiny-small thinker, where the 4-bit-able projections are a small share of the process.
"medium" (text hidden 1024, 8 layers) is a second, larger configuration in which the projections dominate the
weights, as in a 7B model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUANTIZATIONS = ("none", "nf4")
PARTS = (
    "LM projections (4-bit in nf4)",
    "LoRA adapters",
    "embed_tokens",
    "lm_head",
    "audio tower",
    "vision tower",
    "norms, biases, other",
)


def part_of(name: str) -> str:
    """The PARTS entry a parameter belongs to, by its module path."""
    if "lora_" in name:
        return "LoRA adapters"
    if "embed_tokens" in name:
        return "embed_tokens"
    if "lm_head" in name:
        return "lm_head"
    if ".audio_tower." in name:
        return "audio tower"
    if ".visual." in name:
        return "vision tower"
    if re.search(r"\.language_model\.layers\.\d+\..*_proj\.(base_layer\.)?weight$", name):
        return "LM projections (4-bit in nf4)"
    return "norms, biases, other"


def tensor_bytes(tensor) -> int:
    """Bytes a parameter holds, including the quantization constants of a bitsandbytes 4-bit weight."""
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        total += state.absmax.numel() * state.absmax.element_size()
        state = state.state2 if state.nested else None
    return total


def proc_status(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_child(model_path: str, quantization: str, steps: int, batch_size: int, media_dir: str) -> dict:
    """One measured SFT run in this (fresh) process; returns the numbers as a dict."""
    import resource

    import lightning as L
    import torch

    from data_modules import MSADataModule
    from msathinker.policy import LoraOptions, PolicyOptions
    from msathinker.sft import SFTModule

    torch.set_num_threads(2)
    rss_after_imports = proc_status("VmRSS")

    class MemoryProbe(L.Callback):
        """Weight bytes once the model is built; then resets the RSS high-water mark to see the training peak."""

        def on_fit_start(self, trainer, module):
            self.build_peak = proc_status("VmHWM")
            self.rss_after_build = proc_status("VmRSS")
            self.weights = dict.fromkeys(PARTS, 0)
            for name, param in module.model.named_parameters():
                self.weights[part_of(name)] += tensor_bytes(param)
            self.trainable = sum(p.numel() * p.element_size() for p in module.model.parameters() if p.requires_grad)
            self.saved: dict[int, int] = {}
            self.params = {p.untyped_storage().data_ptr() for p in module.model.parameters()}
            Path("/proc/self/clear_refs").write_text("5")

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:  # count the activations autograd keeps for backward in the first step
                self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
                self.hooks.__enter__()

        def pack(self, tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.params:
                self.saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        def on_before_backward(self, trainer, module, loss):
            if getattr(self, "hooks", None) is not None:
                self.hooks.__exit__(None, None, None)
                self.hooks = None

        def on_train_end(self, trainer, module):
            self.train_peak = proc_status("VmHWM")
            state = trainer.optimizers[0].state.values()
            self.optimizer = sum(t.numel() * t.element_size() for s in state for t in s.values() if t.dim() > 0)

    L.seed_everything(0)
    module = SFTModule(
        policy=PolicyOptions(model_path=model_path, lora=LoraOptions(r=16, alpha=32), quantization=quantization)
    )
    data = MSADataModule(
        processor_path=model_path, dataset="demo_mosi", targets="rules", batch_size=batch_size,
        max_clips=batch_size * steps, media_cache_dir=media_dir,
    )  # fmt: skip
    probe = MemoryProbe()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[probe], default_root_dir=media_dir,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return {
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_imports": rss_after_imports,
        "rss_after_build": probe.rss_after_build,
        "build_peak": probe.build_peak,
        "train_peak": probe.train_peak,
        "weights": probe.weights,
        "trainable": probe.trainable,
        "optimizer": probe.optimizer,
        "saved_activations": sum(probe.saved.values()),
    }


def measure(model_path: str, quantization: str, args: argparse.Namespace, media_dir: str) -> dict:
    """Run one configuration in a fresh interpreter (this parent never imports torch) and parse its result."""
    spec = json.dumps({"model_path": model_path, "quantization": quantization, "steps": args.steps,
                       "batch_size": args.batch_size, "media_dir": media_dir})  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec], cwd=REPO, env=os.environ, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"child run {quantization} on {model_path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def report(preset: str, runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    def median(q: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[q])

    print(
        f"\npreset {preset}: LoRA r=16 on the LM projections, {args.steps} SFT steps of {args.batch_size} demo_mosi "
        f"clips, float32 compute; medians of {args.rounds} runs each (MB)"
    )
    print(f"{'':44}{'none (fp32)':>12}{'nf4':>12}{'nf4/none':>10}")
    for key, label in (
        ("ru_maxrss", "peak RSS of the process (ru_maxrss)"),
        ("train_peak", "peak RSS while training"),
        ("build_peak", "peak RSS until the model is built"),
        ("rss_after_build", "RSS once the model is built"),
        ("rss_after_imports", "RSS after imports (before any model)"),
    ):
        none, nf4 = median("none", key), median("nf4", key)
        print(f"{label:44}{mb(none):>12}{mb(nf4):>12}{nf4 / none:10.3f}")
    none, nf4 = (statistics.median(r["train_peak"] - r["rss_after_build"] for r in runs[q]) for q in QUANTIZATIONS)
    print(f"{'growth while training (peak - once built)':44}{mb(none):>12}{mb(nf4):>12}{nf4 / none:10.3f}")
    print("where the bytes go (exact, first run):")
    first = {q: runs[q][0] for q in QUANTIZATIONS}
    for part in PARTS:
        none, nf4 = first["none"]["weights"][part], first["nf4"]["weights"][part]
        print(f"  weights: {part:36}{mb(none):>12}{mb(nf4):>12}")
    none, nf4 = sum(first["none"]["weights"].values()), sum(first["nf4"]["weights"].values())
    print(f"  {'weights, total':45}{mb(none):>12}{mb(nf4):>12}{nf4 / none:10.3f}")
    for key, label in (
        ("trainable", "gradients (trainable parameters)"),
        ("optimizer", "AdamW state (exp_avg, exp_avg_sq)"),
        ("saved_activations", "activations saved for backward, step 1"),
    ):
        print(f"  {label:45}{mb(first['none'][key]):>12}{mb(first['nf4'][key]):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "medium"], choices=["small", "medium"])
    parser.add_argument("--steps", type=int, default=4, help="SFT optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration (alternating)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(**json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            if preset == "small":
                model_path = "tiny-small"
            else:
                model_path = f"{tmp}/model-{preset}"
                subprocess.run(
                    [sys.executable, "-m", "msathinker", "tiny-checkpoint", model_path, "--preset", preset],
                    cwd=REPO, env=os.environ, check=True, capture_output=True,
                )  # fmt: skip
            runs: dict[str, list[dict]] = {q: [] for q in QUANTIZATIONS}
            for _ in range(args.rounds):
                for quantization in QUANTIZATIONS:
                    runs[quantization].append(measure(model_path, quantization, args, f"{tmp}/media"))
            report(preset, runs, args)


if __name__ == "__main__":
    main()
