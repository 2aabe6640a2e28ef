"""The project's own subcommands: plain typed functions; jsonargparse turns their docstrings into --help."""

from __future__ import annotations

from typing import Literal

from msathinker.synthesis import run_synthesis


def tiny_checkpoint(
    out_dir: str,
    preset: Literal["tiny", "small", "bench", "medium"] = "tiny",
    tokenizer: Literal["small", "qwen"] = "small",
    layout: Literal["thinker", "full"] = "thinker",
    seed: int = 0,
) -> None:
    """Write a random-init Qwen2.5-Omni checkpoint in the standard HF layout.

    Args:
        out_dir: directory to write (config.json, model.safetensors, tokenizer and processor files).
        preset: model size: "tiny" (text hidden 64, 2 layers; tests), "small" (hidden 256, 4 layers; the
            quickstart), "bench" (the small LM with audio/vision towers of similar size; encoding benchmarks) or
            "medium" (text hidden 1024, 8 layers, small towers; the 4-bit memory benchmark).
        tokenizer: "small" (byte-level BPE trained on the demo corpus) or "qwen" (the real Qwen2 vocabulary with
            the Qwen2.5-Omni special-token ids).
        layout: "thinker" (a thinker-only checkpoint) or "full" (Qwen2_5OmniForConditionalGeneration layout
            without talker).
        seed: seed of the random weights.
    """
    from msathinker.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(out_dir, preset=preset, tokenizer=tokenizer, layout=layout, seed=seed)
    print(f"wrote {preset} checkpoint ({tokenizer} tokenizer, {layout} layout) to {path}")


def demo_data(out_dir: str, domain: Literal["demo_mosi", "demo_sims"] = "demo_mosi", seed: int = 0) -> None:
    """Write the synthetic MSA demo dataset in the MMSA raw layout (label.csv + Raw/<video_id>/<clip_id>.mp4).

    Args:
        out_dir: directory to write; must not exist or be empty.
        domain: "demo_mosi" (English, labels on [-3, 3]) or "demo_sims" (Chinese, labels on [-1, 1]).
        seed: seed of the generator; the same seed gives the same dataset.
    """
    from msathinker.demo_data import generate_demo_dataset

    path = generate_demo_dataset(out_dir, domain=domain, seed=seed)
    print(f"wrote {domain} to {path}")


def export_merged(adapter_path: str, out_dir: str, model_path: str | None = None) -> None:
    """Merge a LoRA adapter into its base thinker and save a plain HF checkpoint with the processor.

    Args:
        adapter_path: directory of the peft adapter (adapter_config.json + adapter_model.safetensors).
        out_dir: where the merged checkpoint goes (loadable with from_pretrained, no peft needed).
        model_path: the base checkpoint; default: the adapter's base_model_name_or_path.
    """
    import json
    from pathlib import Path

    from peft import PeftModel

    from msathinker.modeling import load_thinker

    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.is_file():
        raise SystemExit(f"export-merged: {adapter_path}: no adapter_config.json there")
    base = model_path or json.loads(config_file.read_text())["base_model_name_or_path"]
    model, processor = load_thinker(base)
    merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    merged.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    print(f"merged {adapter_path} into {base}; wrote {out_dir}")


def recipe(
    experiment: str = "quickstart",
    output_dir: str = "runs/quickstart-recipe",
    synthesize: str | None = "experiments/quickstart/synthesize.yaml",
    sft: str = "experiments/quickstart/sft.yaml",
    grpo: str | None = "experiments/quickstart/hint_grpo.yaml",
    sft_args: list[str] | None = None,
    grpo_args: list[str] | None = None,
    cross_domain: list[str] | None = None,
) -> None:
    """Run synthesis -> SFT -> Hint-GRPO -> test as nested MLflow runs and print the final metrics per stage.

    Args:
        experiment: MLflow experiment of the parent run and the stage runs.
        output_dir: directory for every stage's files and the summary table.
        synthesize: synthesis config (stage 0); null skips it and SFT uses its config's own targets.
        sft: SFT config (stage 1); its data targets become the synthesis output.
        grpo: Hint-GRPO config (stage 2), started from the SFT adapter; null stops after SFT.
        sft_args: extra command-line overrides of the SFT stage.
        grpo_args: extra command-line overrides of the Hint-GRPO stage.
        cross_domain: datasets each trained model is also tested on (answers mapped between label ranges):
            a demo name (demo_sims) or name=root for real data (mosi=/data/MOSI).
    """
    from msathinker.recipe import run_recipe

    run_recipe(experiment, output_dir, synthesize, sft, grpo, sft_args or [], grpo_args or [], cross_domain or [])


def compare(
    experiment: str | None = None,
    tracking_uri: str | None = None,
    out: str | None = None,
    metrics: list[str] | None = None,
    run_name_contains: str | None = None,
    format: Literal["text", "markdown", "csv", "json"] = "text",
    width: int | None = None,
    params: list[str] | None = None,
) -> None:
    """Print a table of an MLflow experiment's runs (differing params, final metrics) and write a PNG plot.

    Params equal in every run, and those that only name a run or its output location (default_root_dir, dirpath,
    run_name, ...), are not shown; metrics show their final value. Nested runs are included, with their parent's
    name. The PNG has the train/reward, train/hint_rate, train/frac_reward_zero_std and train/loss curves and bars
    of the final test metrics (MAE, Corr, Non0_acc_2, Mult_acc_2, polarity_acc, format_rate).

    Args:
        experiment: MLflow experiment name (e.g. quickstart); without it the error lists the experiments.
        tracking_uri: where the runs are; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.
        out: the PNG to write (default compare-<experiment>.png here).
        metrics: table only the metrics matching one of these globs, one per --metrics+ (e.g.
            --metrics+ 'test/*' --metrics+ train/reward); default all but epoch.
        run_name_contains: keep only the runs whose name contains this.
        format: "text" (runs in columns, rows the differing params then the metrics, in blocks that fit --width),
            "markdown" (one row per run, for a paper or a README), "csv" (one row per run with the full run id, for
            scripts) or "json" (one object per run: run, run_id, parent, status, start_time, params, metrics). With
            markdown, csv and json stdout holds only the table; the summary line and the plot's path go to stderr.
        width: the text table's width in characters (at least 40); default: the terminal's width, 120 when stdout
            is not a terminal.
        params: show only the differing params matching one of these globs, one per --params+ (e.g.
            --params+ 'model.init_args.hint.*' --params+ '*.lr'); default all.
    """
    from msathinker.compare import main

    main(experiment, tracking_uri, out, metrics, run_name_contains, format, width, params)


COMMANDS = {
    "tiny-checkpoint": tiny_checkpoint,
    "demo-data": demo_data,
    "export-merged": export_merged,
    "synthesize": run_synthesis,
    "recipe": recipe,
    "compare": compare,
}
