"""Stage 0 synthesis: the three teachers, filtering, the crash-safe JSONL (torn line, kill -9) and the endpoint's
failure modes, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from msathinker.dc_format import parse_completion
from msathinker.scales import SCALES
from msathinker.synthesis import (
    FilterRules,
    OpenAITeacher,
    RecordStore,
    RulesTeacher,
    TeacherError,
    TransformersTeacher,
    run_synthesis,
)
from msathinker.synthesis.filtering import judge
from tests.openai_server import CANNED, ChatServer, TinyModelResponder

REPO = Path(__file__).resolve().parents[1]


def synth(tiny_model: str, tmp_path: Path, teacher, max_clips: int = 4, **kwargs) -> dict:
    defaults = dict(output=str(tmp_path / "out.jsonl"), dataset="demo_mosi", processor_path=tiny_model,
                    max_clips=max_clips, experiment=None, progress=False)  # fmt: skip
    return run_synthesis(teacher=teacher, **{**defaults, **kwargs})


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def openai(url: str, **kwargs) -> OpenAITeacher:
    return OpenAITeacher(**{"base_url": url, "model": "tiny", "backoff": 0.01, "max_retries": 2, **kwargs})


def test_filter_reasons():
    mosei = SCALES["mosei"]
    good = parse_completion(CANNED)
    assert judge(good, -1.6, mosei, FilterRules()) is None
    assert judge(good, 1.0, mosei, FilterRules()) == "wrong polarity: said negative, label is positive"
    assert judge(good, -1.0, mosei, FilterRules()) == "score off by 0.80 > 0.50"
    assert judge(good, -1.0, mosei, FilterRules(tolerance=-1)) is None
    assert judge(parse_completion("it is good"), 1.0, mosei, FilterRules()).startswith("invalid format: ")


def test_rules_teacher_then_sft(tiny_model, tmp_path):
    import lightning as L

    from data_modules import MSADataModule
    from msathinker.evaluation import GenerationOptions
    from msathinker.policy import LoraOptions, PolicyOptions
    from msathinker.sft import SFTModule

    summary = synth(tiny_model, tmp_path, RulesTeacher(), max_clips=8)
    assert summary["kept"] == 8 and summary["teacher_polarity_accuracy"] == 1.0 and summary["teacher_score_mae"] == 0
    records = read(tmp_path / "out.jsonl")
    assert {r["teacher"] for r in records} == {"rules"} and all(r["kept"] and r["reason"] is None for r in records)
    dm = MSADataModule(
        dataset="demo_mosi", processor_path=tiny_model, targets=str(tmp_path / "out.jsonl"), max_clips=8, batch_size=4
    )
    sft = SFTModule(policy=PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8)),
                    generation=GenerationOptions(max_new_tokens=4))  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(sft, datamodule=dm)
    assert trainer.global_step == 2 and len(dm.datasets["train"]) == 8


def test_words_reading_rules_teacher_is_filtered_on_sarcastic_clips(tiny_model, tmp_path):
    """read_words imitates a teacher fooled by sarcasm: exactly the sarcastic clips are rejected, for polarity."""
    from msathinker.demo.data import DOMAINS, sample_clips

    clips = [c for c in sample_clips(DOMAINS["demo_mosi"]) if c.mode == "train"][:24]
    summary = synth(tiny_model, tmp_path, RulesTeacher(read_words=True), max_clips=24)
    records = read(tmp_path / "out.jsonl")
    assert [not r["kept"] for r in records] == [c.sarcastic for c in clips]
    assert summary["rejected"] == sum(c.sarcastic for c in clips) > 0
    assert all(r["reason"].startswith("wrong polarity") for r in records if not r["kept"])


def test_transformers_teacher_on_the_tiny_checkpoint(omni_model, tmp_path):
    summary = synth(omni_model, tmp_path, TransformersTeacher(omni_model, max_new_tokens=8), num_samples=2)
    records = read(tmp_path / "out.jsonl")
    assert summary["clips"] == len(records) == 4
    assert all(r["teacher"] == f"transformers:{omni_model}" and r["samples_tried"] == 2 for r in records)
    assert all(not r["kept"] and r["reason"].startswith("invalid format") for r in records)  # random weights


def test_a_local_qwen3_omni_teacher_renders_the_students_prompts_with_its_own_processor(tiny_model, tmp_path):
    """A Qwen3-Omni teacher for a Qwen2.5-Omni student: the records are the teacher's, from Qwen3-Omni inputs."""
    from msathinker.assets import resolve_model_path

    teacher = TransformersTeacher(resolve_model_path("tiny-qwen3"), max_new_tokens=4)
    summary = synth(tiny_model, tmp_path, teacher, max_clips=2)
    assert summary["clips"] == 2 and type(teacher.collator.processor).__name__ == "Qwen3OmniMoeProcessor"
    assert "<|audio_start|>" in teacher.collator.prompt({"id": "x", "text": "t", "frame_spacing": 0.5})


def test_openai_teacher_backed_by_the_tiny_checkpoint(omni_model, tmp_path):
    with ChatServer(TinyModelResponder(omni_model)) as url:
        summary = synth(omni_model, tmp_path, openai(url, max_in_flight=2), max_clips=3)
    records = read(tmp_path / "out.jsonl")
    assert summary["clips"] == 3 and len({r["id"] for r in records}) == 3
    assert all(r["teacher"] == "openai:tiny" and isinstance(r["completion"], str) for r in records)


def test_a_non_dc_answer_is_rejected_with_its_reason(tiny_model, tmp_path):
    with ChatServer(lambda body: "The speaker sounds happy, maybe 2.") as url:
        summary = synth(tiny_model, tmp_path, openai(url), max_clips=2)
    assert summary["rejected"] == 2 and summary["rejected_by_reason"] == {"invalid format": 2}
    assert read(tmp_path / "out.jsonl")[0]["reason"] == "invalid format: no <answer> tag"


def test_429_then_200_succeeds(tiny_model, tmp_path):
    server = ChatServer(script=[429])
    with server as url:
        summary = synth(tiny_model, tmp_path, openai(url, max_in_flight=1), max_clips=2)
    assert summary["clips"] == 2 and server.requests == 3


@pytest.mark.parametrize(
    ("script", "reason"),
    [([500] * 3, "giving up after 2 retries; last error HTTP 500: scripted 500"),
     (["malformed"], "malformed JSON from the endpoint"), (["hang"] * 3, "giving up after 2 retries; last error")],
)  # fmt: skip
def test_a_clip_the_endpoint_keeps_failing_is_recorded_and_the_run_goes_on(tiny_model, tmp_path, script, reason):
    server = ChatServer(script=["ok", *script])
    with server as url:
        summary = synth(tiny_model, tmp_path, openai(url, max_in_flight=1, timeout=0.3), max_clips=3, batch_size=1)
    records = read(tmp_path / "out.jsonl")
    assert [r["teacher_error"] for r in records] == [False, True, False]
    assert records[0]["completion"] == records[2]["completion"] == CANNED
    assert records[1]["reason"].startswith(f"teacher error: {reason}") and records[1]["completion"] is None
    assert not records[1]["kept"] and records[1]["samples_tried"] == 0
    assert summary["clips"] == 3 and summary["teacher_errors"] == 1 and summary["kept"] + summary["rejected"] == 2


def test_other_4xx_is_not_retried(tiny_model, tmp_path):
    server = ChatServer(script=[400])
    with server as url:
        summary = synth(tiny_model, tmp_path, openai(url, max_in_flight=1), max_clips=1)
    assert server.requests == 1 and summary["teacher_errors"] == 1
    assert read(tmp_path / "out.jsonl")[0]["reason"] == "teacher error: HTTP 400: scripted 400"


CONTEXT_ERROR = (
    "This model's maximum context length is 32768 tokens. However, you requested 41002 tokens (40490 in the "
    "messages, 512 in the completion). Please reduce the length of the messages or completion."
)


def refuse_the_plot_clips(body: dict) -> str | tuple[int, str]:
    """vLLM's answer to a video over the context length, here for every clip whose transcript mentions the plot."""
    return (400, CONTEXT_ERROR) if "plot" in body["messages"][-1]["content"][-1]["text"] else CANNED


def test_refused_clips_are_recorded_and_retry_failed_asks_again_without_duplicates(tiny_model, tmp_path):
    from data_modules.targets import read_targets
    from msathinker.demo.data import DOMAINS, sample_clips

    output = tmp_path / "out.jsonl"
    train = [c for c in sample_clips(DOMAINS["demo_mosi"]) if c.mode == "train"][:8]
    plot = {f"{c.video_id}$_${c.clip_id}" for c in train if "plot" in c.text}
    assert 0 < len(plot) < 8
    run = dict(max_clips=8, batch_size=3)
    with ChatServer(refuse_the_plot_clips) as url:
        summary = synth(tiny_model, tmp_path, openai(url, max_in_flight=2), **run)
    records = read(output)
    assert len(records) == 8 and {r["id"] for r in records if r["teacher_error"]} == plot
    assert all(r["reason"] == f"teacher error: HTTP 400: {CONTEXT_ERROR}" for r in records if r["id"] in plot)
    assert all(r["completion"] == CANNED for r in records if r["id"] not in plot)
    assert summary["teacher_errors"] == len(plot) and summary["kept"] + summary["rejected"] == 8 - len(plot)
    first_targets = read_targets(output)

    server = ChatServer()  # the plain re-run skips every recorded clip; retry_failed asks for the refused ones
    with server as url:
        assert synth(tiny_model, tmp_path, openai(url), **run)["teacher_errors"] == len(plot)
        assert server.requests == 0
        summary = synth(tiny_model, tmp_path, openai(url), retry_failed=True, **run)
    assert server.requests == len(plot) and summary["written_this_run"] == len(plot)
    records = read(output)
    assert len(records) == 8 and len({r["id"] for r in records}) == 8 and not any(r["teacher_error"] for r in records)
    assert summary["clips"] == 8 and summary["teacher_errors"] == 0 and summary["kept"] + summary["rejected"] == 8
    targets = read_targets(output)  # SFT's reader: one kept record per clip (it rejects a duplicate id)
    assert len(targets) == summary["kept"] and first_targets.items() <= targets.items()


def test_an_endpoint_that_goes_away_stops_the_run_and_keeps_what_was_written(tiny_model, tmp_path):
    server = ChatServer()

    def answer_then_go_away(body: dict) -> str:
        if server.requests == 2:
            threading.Thread(target=server.__exit__).start()
        return CANNED

    server.respond = answer_then_go_away
    with server as url, pytest.raises(TeacherError, match="is not reachable"):
        synth(tiny_model, tmp_path, openai(url, max_in_flight=1, timeout=1.0), max_clips=4, batch_size=1)
    assert [r["completion"] for r in read(tmp_path / "out.jsonl")] == [CANNED, CANNED]


def test_an_unreachable_endpoint_fails_before_any_work(tiny_model, tmp_path):
    with pytest.raises(TeacherError, match="not reachable"):
        synth(tiny_model, tmp_path, openai("http://127.0.0.1:9/v1"))
    assert not (tmp_path / "out.jsonl").exists()


def test_torn_last_line_is_repaired_and_a_bad_middle_line_is_an_error(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "kept": true}\n{"id": "b", "ke')
    store = RecordStore(path)
    assert store.done == {"a"} and path.read_text() == '{"id": "a", "kept": true}\n'
    assert "incomplete" in caplog.text
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match=r"out\.jsonl:2: not valid JSON"):
        RecordStore(path)


def test_drop_replaces_the_file_at_once_and_a_leftover_rewrite_is_removed(tmp_path):
    path, leftover = tmp_path / "out.jsonl", tmp_path / "out.jsonl.rewrite"
    path.write_text('{"id": "a", "kept": true}\n{"id": "b", "kept": false, "teacher_error": true}\n')
    leftover.write_text('{"id": "a", "ke')  # a kill while `drop` was writing: the file itself is the old one
    store = RecordStore(path)
    assert not leftover.exists() and store.done == {"a", "b"}
    store.drop({"b"})
    assert path.read_text() == '{"id": "a", "kept": true}\n' and not leftover.exists()
    assert store.done == {"a"} and RecordStore(path).records == store.records == [{"id": "a", "kept": True}]


def test_kill_9_then_rerun_holds_every_clip_once(tiny_model, tmp_path):
    output = tmp_path / "out.jsonl"
    config = tmp_path / "synth.yaml"
    with ChatServer(latency=0.1) as url:
        config.write_text(
            f"teacher:\n  class_path: msathinker.synthesis.OpenAITeacher\n  init_args:\n    base_url: {url}\n"
            f"    model: tiny\n    max_in_flight: 1\noutput: {output}\ndataset: demo_mosi\n"
            f"processor_path: {tiny_model}\nmax_clips: 24\nbatch_size: 1\nexperiment: null\n"
        )
        command = [sys.executable, "-m", "msathinker", "synthesize", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not output.exists() or output.read_text().count("\n") < 5):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        written = output.read_text().count("\n")
        assert 5 <= written < 24, "the kill should land mid-run"
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read(output)
    assert len(records) == 24 and len({r["id"] for r in records}) == 24
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["clips"] == 24 and summary["written_this_run"] == 24 - written
    assert summary["kept"] + summary["rejected"] == 24
