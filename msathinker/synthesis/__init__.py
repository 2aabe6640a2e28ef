"""Stage 0: teacher chain-of-thought synthesis with the DC structure (docs/method.md, Teacher synthesis).

For each clip of the chosen splits: build the same prompt the student is trained with, ask the teacher for
`num_samples` completions, keep the first that passes the filter (valid DC format, the label's polarity, score
within tolerance) or else the least bad one, and append one record per clip to the output JSONL:

    {"id", "video_id", "clip_id", "split", "prompt", "completion", "polarity", "score", "label", "label_polarity",
     "kept", "reason", "samples_tried", "teacher", "teacher_error"}

A clip the teacher refuses for good (e.g. a video over the served model's context length) is recorded with
kept=false, teacher_error=true, completion null and the teacher's status and message as the reason, and the run
goes on. The SFT stage reads the kept records directly (`data.init_args.targets: <jsonl>`). Re-running the same
command skips the clips already written; with `retry_failed: true` it asks again for the refused ones, whose new
record replaces the old (see store.py for the crash-safety contract).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from msathinker.synthesis.filtering import FilterRules, best_sample, summarize
from msathinker.synthesis.store import RecordStore
from msathinker.synthesis.teachers import (
    Clip,
    ClipRefused,
    OpenAITeacher,
    RulesTeacher,
    Teacher,
    TeacherError,
    TransformersTeacher,
)

__all__ = [
    "ClipRefused",
    "FilterRules",
    "OpenAITeacher",
    "RecordStore",
    "RulesTeacher",
    "Teacher",
    "TeacherError",
    "TransformersTeacher",
    "run_synthesis",
    "summarize",
]

log = logging.getLogger(__name__)


def run_synthesis(
    *,
    teacher: Teacher,
    output: str = "runs/synthesis/records.jsonl",
    dataset: str,
    data_root: str | None = None,
    splits: list[str] | None = None,
    processor_path: str,
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
    progress: bool = True,
    progress_every_n_clips: int = 50,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Write teacher chain-of-thought in DC form for every clip of a dataset split, filtered against the labels.

    Resumes from `output` if it exists; prints and returns the summary of all records in the file (kept / rejected
    by reason / refused by the teacher, teacher polarity accuracy and score MAE, clips/s). A clip the teacher
    refuses for good is recorded with kept=false and teacher_error=true, and the run goes on.

    Args:
        teacher: the backend (class_path/init_args): msathinker.synthesis.OpenAITeacher (an OpenAI-compatible
            endpoint such as `vllm serve`), msathinker.synthesis.TransformersTeacher (local omni checkpoint) or
            msathinker.synthesis.RulesTeacher (the rule-based stand-in of the demo). Required.
        output: the JSONL to write; if it exists, clips already in it are skipped (resume).
        dataset: mosi, mosei, sims, simsv2, demo_mosi or demo_sims (picks the label scale). Required.
        data_root: dataset directory (label.csv + Raw/); None for the demo datasets.
        splits: label.csv modes to synthesize (default: [train]).
        processor_path: checkpoint whose processor and chat template build the prompts (the student's, so the
            records match what SFT trains on). Required.
        modalities: inputs given to the teacher, any of text, audio, video (default: all).
        num_samples: completions asked per clip; the first one passing the filter is kept.
        label_conditioning: tell the teacher the annotated score and ask it to explain it (off by default).
        filter: which completions are kept (format, polarity, score tolerance).
        batch_size: clips per teacher call (a generate batch, or the clips queued to the endpoint at once).
        max_clips: only the first N clips of each split (quick runs).
        fps: video frames sampled per second.
        max_frames: most frames per clip.
        max_pixels: most pixels per frame.
        experiment: MLflow experiment of the summary run; null disables logging.
        parent_run_id: MLflow run to nest the summary run under (the recipe sets it).
        progress: show the progress: a bar on a terminal, a line (clips done, clips/s, ETA) every
            `progress_every_n_clips` clips when stdout is not a terminal (a log file).
        progress_every_n_clips: see `progress`.
        retry_failed: ask the teacher again for the clips of these splits it refused on an earlier run (records
            with teacher_error=true); each one's new record replaces the old, so the file keeps one record per clip.
    """
    from data_modules import MSADataModule
    from msathinker.dc_format import polarity_of
    from msathinker.progress import progress_bar

    splits = splits or ["train"]
    data = MSADataModule(
        dataset=dataset, data_root=data_root, processor_path=processor_path,
        modalities=modalities or ["text", "audio", "video"], fps=fps, max_frames=max_frames, max_pixels=max_pixels,
        max_clips=max_clips,
    )  # fmt: skip
    store = RecordStore(output)
    teacher.setup(data.build_collator())  # fails fast (e.g. an unreachable endpoint) before any decoding
    for split in splits:  # then validate and decode everything: bad data fails before any teacher request
        data.setup_split(split)
    if retry_failed:
        wanted = {r.id for split in splits for r in data.datasets[split].records}
        store.drop({r["id"] for r in store.records if r.get("teacher_error") and r["id"] in wanted})
    started = time.perf_counter()
    written = 0
    for split in splits:
        dataset_split = data.datasets[split]
        todo = [i for i, r in enumerate(dataset_split.records) if r.id not in store.done]
        scale = data.scale
        bar = progress_bar(len(todo), f"synthesizing {split}", "clip", progress_every_n_clips, disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = []
            for i in todo[start : start + batch_size]:
                item = dataset_split[i]
                if label_conditioning:
                    item["note"] = f"The annotated score is {item['label']:g}; explain it in this format."
                chunk.append(Clip(item, str(dataset_split.records[i].path)))
            for k, result in teacher.complete(chunk, num_samples):
                item, record = chunk[k].item, dataset_split.records[todo[start + k]]
                clip = {
                    "id": item["id"], "video_id": record.video_id, "clip_id": record.clip_id, "split": split,
                    "prompt": data.collator.conversation(item)[-1]["content"][-1]["text"], "label": item["label"],
                    "label_polarity": polarity_of(item["label"], scale), "teacher": teacher.name,
                }  # fmt: skip
                if isinstance(result, ClipRefused):
                    log.warning("%s; recorded with kept=false (retry_failed: true asks again)", result)
                    outcome = {"completion": None, "polarity": None, "score": None, "kept": False,
                               "reason": f"teacher error: {result.reason}", "samples_tried": 0}  # fmt: skip
                else:
                    text, parsed, reason = best_sample(
                        result, item["label"], scale, filter, data.collator.output_format
                    )
                    outcome = {"completion": text, "polarity": parsed.effective_polarity(scale),
                               "score": parsed.score, "kept": reason is None, "reason": reason,
                               "samples_tried": len(result)}  # fmt: skip
                store.append({**clip, **outcome, "teacher_error": isinstance(result, ClipRefused)})
                written += 1
                bar.update()
        bar.close()
    summary = summarize(store.records)
    summary["written_this_run"] = written
    summary["clips_per_second"] = written / max(time.perf_counter() - started, 1e-9)
    print(json.dumps(summary, indent=2))
    if summary["teacher_errors"]:
        log.warning(
            "%s: the teacher refused %d clip(s) (records with teacher_error: true); run again with "
            "retry_failed: true to ask for them again", output, summary["teacher_errors"],
        )  # fmt: skip
    if experiment is not None:
        _log_to_mlflow(summary, output, teacher, experiment, parent_run_id)
    return summary


def _log_to_mlflow(summary: dict[str, Any], output: str, teacher: Teacher, experiment: str, parent: str | None):
    import mlflow

    from msathinker.tracking import default_tracking_uri

    client = mlflow.MlflowClient(default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {"mlflow.runName": "synthesis", **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(experiment_id, tags=tags)
    client.log_param(run.info.run_id, "teacher", teacher.name)
    for key, value in summary.items():
        if isinstance(value, int | float):
            client.log_metric(run.info.run_id, key, float(value))
    for reason, count in summary["rejected_by_reason"].items():
        client.log_metric(run.info.run_id, f"rejected/{reason.replace(' ', '_')}", float(count))
    client.log_artifact(run.info.run_id, str(Path(output)))
    client.set_terminated(run.info.run_id)
