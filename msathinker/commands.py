"""The project's own subcommands: plain typed functions; jsonargparse turns their docstrings into --help."""

from __future__ import annotations

from typing import Literal

from msathinker.scales import ScaleName
from msathinker.synthesis import run_synthesis


def tiny_checkpoint(
    out_dir: str,
    preset: Literal["tiny", "small", "bench", "medium"] = "tiny",
    tokenizer: Literal["small", "qwen"] = "small",
    layout: Literal["thinker", "full"] = "thinker",
    seed: int = 0,
    family: Literal["qwen2_5_omni", "qwen3_omni"] = "qwen2_5_omni",
) -> None:
    """Write a random-init Qwen2.5-Omni or Qwen3-Omni checkpoint in the standard HF layout.

    Args:
        out_dir: directory to write (config.json, model.safetensors, tokenizer and processor files).
        preset: model size: "tiny" (text hidden 64, 2 layers; tests), "small" (hidden 256, 4 layers; the
            quickstart), "bench" (the small LM with audio/vision towers of similar size; encoding benchmarks) or
            "medium" (text hidden 1024, 8 layers, small towers; the 4-bit memory benchmark).
        tokenizer: "small" (byte-level BPE trained on the demo corpus) or "qwen" (the real Qwen vocabulary with the
            family's special tokens at the released ids).
        layout: "thinker" (a thinker-only checkpoint) or "full" (the layout of the released checkpoints: thinker
            plus a tiny talker and token2wav / code2wav).
        seed: seed of the random weights.
        family: "qwen2_5_omni" (Qwen2.5-Omni thinker, dense) or "qwen3_omni" (Qwen3-Omni-MoE thinker: 4 experts,
            2 per token, deepstack vision features; its own processor and chat template).
    """
    from msathinker.demo.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(out_dir, preset=preset, tokenizer=tokenizer, layout=layout, seed=seed, family=family)
    print(f"wrote {family} {preset} checkpoint ({tokenizer} tokenizer, {layout} layout) to {path}")


def demo_data(out_dir: str, domain: Literal["demo_mosi", "demo_sims"] = "demo_mosi", seed: int = 0) -> None:
    """Write the synthetic MSA demo dataset in the MMSA raw layout (label.csv + Raw/<video_id>/<clip_id>.mp4).

    Args:
        out_dir: directory to write; must not exist or be empty.
        domain: "demo_mosi" (English, labels on [-3, 3]) or "demo_sims" (Chinese, labels on [-1, 1]).
        seed: seed of the generator; the same seed gives the same dataset.
    """
    from msathinker.demo.data import generate_demo_dataset

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


def analyze(
    model: str,
    videos: str,
    transcripts: str | None = None,
    output: str | None = None,
    run_config: str | None = None,
    model_path: str | None = None,
    trained_scale: ScaleName | None = None,
    scale: ScaleName | None = None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    media_cache_dir: str | None = None,
    progress: bool = True,
) -> None:
    """Analyze new clips with a trained model: one JSON line per clip (polarity, score, DC texts, parse status).

    Each line: {"id" (the file name without extension), "file", "polarity", "score" (on `scale`), "scale",
    "discrimination", "calibration" (the DC texts; null if absent), "parse_status" ("valid": exactly the trained
    format, "partial": a score or polarity could still be read, "unparsed"), "parse_error", "completion"}.
    The prompt is the one the model was trained with: its settings (modalities, frames and pixels, system prompt,
    output format, label range) and generation settings come from the run config, by default the config.yaml that
    fit writes next to the adapter directory; without one, from the training defaults. No label.csv is needed.

    Args:
        model: a peft adapter directory (e.g. runs/quickstart-recipe/sft/adapter) or a checkpoint (a merged one
            from export-merged, a local directory, hub id or tiny alias).
        videos: the clips: one media file PyAV decodes (mp4, mkv, webm, mov, ...), a directory (every file in
            it) or a glob pattern in quotes ('clips/*.mkv').
        transcripts: what each clip says: a JSONL of {"id" or "file", "text"} lines or a CSV with the columns
            id or file, and text (id: the file name without extension). Clips without a row get an empty
            transcript; none: every transcript is empty.
        output: the JSONL to write (replaced if it exists); none: standard output.
        run_config: the training config (the fit run's config.yaml, or the YAML trained with); default: the
            config.yaml in the adapter's parent directory, if there.
        model_path: the base checkpoint of an adapter; default: the run config's policy.model_path, else the
            adapter's base_model_name_or_path.
        trained_scale: the label range the model was trained on, which the prompt states (mosei: [-3, 3], sims:
            [-1, 1]); default: the run config's (its prediction_scale, else its dataset's).
        scale: the range of the reported scores (answers are mapped linearly, as in cross-domain testing);
            default: trained_scale.
        batch_size: clips per generate call.
        max_new_tokens: longest completion; default: the run config's generation.max_new_tokens, else 160.
        dtype: weight dtype; default: the run config's policy.dtype, else float32.
        device: torch device; default: cuda if available, else cpu.
        media_cache_dir: where decoded clips are cached (default: <asset cache>/media, as in training).
        progress: show progress bars (on standard error).
    """
    from msathinker.analyze import AnalyzeError, run_analysis

    try:
        run_analysis(
            model, videos, transcripts, output, run_config, model_path, trained_scale, scale, batch_size,
            max_new_tokens, dtype, device, media_cache_dir, progress,
        )  # fmt: skip
    except AnalyzeError as exc:
        raise SystemExit(f"analyze: {exc}") from exc


def recipe(
    *,
    experiment: str = "msathinker",
    output_dir: str = "runs/recipe",
    synthesize: str | None,
    sft: str,
    grpo: str | None,
    synthesize_args: list[str] | None = None,
    sft_args: list[str] | None = None,
    grpo_args: list[str] | None = None,
    cross_domain: list[str] | None = None,
) -> None:
    """Run synthesis -> SFT -> Hint-GRPO -> test as nested MLflow runs and print the final metrics per stage.

    Args:
        experiment: MLflow experiment of the parent run and the stage runs.
        output_dir: directory for every stage's files and the summary table.
        synthesize: synthesis config (stage 0); null skips it and SFT uses its config's own targets. Required
            (null is a value).
        sft: SFT config (stage 1); its data targets become the synthesis output. Required.
        grpo: Hint-GRPO config (stage 2), started from the SFT adapter; null stops after SFT. Required (null is a
            value).
        synthesize_args: extra command-line overrides of the synthesis stage (e.g. [--config, more.yaml]).
        sft_args: extra command-line overrides of the SFT stage.
        grpo_args: extra command-line overrides of the Hint-GRPO stage.
        cross_domain: datasets each trained model is also tested on (answers mapped between label ranges):
            a demo name (demo_sims) or name=root for real data (mosi=/data/MOSI).
    """
    from msathinker.recipe import run_recipe

    run_recipe(
        experiment, output_dir, synthesize, sft, grpo, sft_args or [], grpo_args or [], cross_domain or [],
        synthesize_args or [],
    )  # fmt: skip


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
    "analyze": analyze,
    "synthesize": run_synthesis,
    "recipe": recipe,
    "compare": compare,
}
