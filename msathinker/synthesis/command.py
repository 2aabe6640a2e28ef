"""`python -m msathinker synthesize`: the typed entry point (jsonargparse turns the docstring into --help)."""

from __future__ import annotations

from msathinker.synthesis.filtering import FilterRules
from msathinker.synthesis.teachers import Teacher


def synthesize(
    teacher: Teacher | None = None,
    output: str = "runs/synthesis/records.jsonl",
    dataset: str = "demo_mosi",
    data_root: str | None = None,
    splits: list[str] | None = None,
    processor_path: str = "tiny",
    modalities: list[str] | None = None,
    num_samples: int = 1,
    label_conditioning: bool = False,
    filter: FilterRules = FilterRules(),
    batch_size: int = 8,
    max_clips: int | None = None,
    fps: float = 2.0,
    max_frames: int = 16,
    max_pixels: int = 16 * 28 * 28,
    experiment: str | None = "synthesis",
    parent_run_id: str | None = None,
) -> dict:
    """Write teacher chain-of-thought in DC form for every clip of a dataset split, filtered against the labels.

    Args:
        teacher: the backend (class_path/init_args): msathinker.synthesis.RulesTeacher (rule-based stand-in),
            msathinker.synthesis.TransformersTeacher (local omni checkpoint) or msathinker.synthesis.OpenAITeacher
            (an OpenAI-compatible endpoint such as `vllm serve`); null: RulesTeacher.
        output: the JSONL to write; if it exists, clips already in it are skipped (resume).
        dataset: mosi, mosei, sims, simsv2, demo_mosi or demo_sims (picks the label scale).
        data_root: dataset directory (label.csv + Raw/); None for the demo datasets.
        splits: label.csv modes to synthesize (default: [train]).
        processor_path: checkpoint whose processor and chat template build the prompts (the student's, so the
            records match what SFT trains on).
        modalities: inputs given to the teacher, any of text, audio, video (default: all).
        num_samples: completions asked per clip; the first one passing the filter is kept.
        label_conditioning: tell the teacher the annotated score and ask it to explain it (off by default).
        filter: which completions are kept (format, polarity, score tolerance).
        batch_size: clips per teacher call (a generate batch, or the clips queued to the endpoint at once).
        max_clips: only the first N clips of each split (quick runs).
        fps: video frames sampled per second (transformers teacher).
        max_frames: most frames per clip (transformers teacher).
        max_pixels: most pixels per frame (transformers teacher).
        experiment: MLflow experiment of the summary run; null disables logging.
        parent_run_id: MLflow run to nest the summary run under (the recipe sets it).

    Returns the summary (kept / rejected by reason, teacher polarity accuracy and score MAE).
    """
    from msathinker.synthesis import RulesTeacher, run_synthesis

    return run_synthesis(
        teacher=teacher or RulesTeacher(), output=output, dataset=dataset, data_root=data_root, splits=splits,
        processor_path=processor_path, modalities=modalities, num_samples=num_samples,
        label_conditioning=label_conditioning, filter_rules=filter, batch_size=batch_size, max_clips=max_clips,
        fps=fps, max_frames=max_frames, max_pixels=max_pixels, experiment=experiment,
        parent_run_id=parent_run_id,
    )  # fmt: skip
