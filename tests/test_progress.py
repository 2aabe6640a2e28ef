"""Progress where people look: plain lines when stdout is not a terminal (training, testing, synthesis), Rich's
bar with an epoch header that never shows a negative count on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from callbacks import LineProgressBar, ProgressOptions, TerminalProgressBar
from callbacks.progress import default_progress_bar
from msathinker.progress import ProgressLines, progress_line
from tests.toy_training import ToyRegression

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^train step (\d+)/(\d+) \| train/loss [\d.]+ \| [\d.e+-]+ it/s \| ETA \d+:\d\d:\d\d$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_format():
    line = progress_line("train step", 40, 400, {"train/loss": 6.46712}, 0.45, "it")
    assert line == "train step 40/400 | train/loss 6.467 | 0.45 it/s | ETA 0:13:20"
    assert progress_line("synthesizing train", 3, None, {}, 2.0, "clip") == "synthesizing train 3 | 2 clip/s"
    assert progress_line("test batch", 0, float("inf"), {}, None, "it") == "test batch 0"


def test_lines_every_n_and_a_closing_line():
    out = io.StringIO()
    lines = ProgressLines("test batch", 5, every_n=2, file=out)
    for _ in range(5):
        lines.update()
    lines.close()
    printed = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in printed] == ["test batch 2/5", "test batch 4/5", "test batch 5/5"]
    assert "it/s" in printed[0] and "ETA" in printed[1] and re.search(r"\| done in \d+:\d\d:\d\d$", printed[2])


def test_the_cli_picks_the_bar_by_terminal():
    options = ProgressOptions(every_n_steps=7)
    lines = default_progress_bar(options, io.StringIO())
    assert isinstance(lines, LineProgressBar) and lines.every_n_steps == 7
    assert isinstance(default_progress_bar(options, Terminal()), TerminalProgressBar)


def test_non_tty_fit_and_test_print_step_loss_rate_and_eta(tiny_model, tmp_path, monkeypatch):
    """`fit` through the CLI with stdout a file: a line per step with the loss, it/s and the ETA, and a closing
    line; `test` a line per batch."""
    from msathinker.cli import MSACLI, cli_kwargs

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    cli = MSACLI(**cli_kwargs(), run=False, args=[
        "--config", str(REPO / "experiments/quickstart/sft.yaml"), "--model.init_args.policy.model_path", tiny_model,
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--trainer.limit_test_batches", "2",
        "--data.init_args.max_clips", "8", "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
        "--data.init_args.media_cache_dir", str(tmp_path / "media"), "--model.init_args.generation.max_new_tokens", "4",
        "--progress.every_n_steps", "1"])  # fmt: skip
    assert isinstance(cli.trainer.progress_bar_callback, LineProgressBar)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    printed = out.getvalue().splitlines()
    steps = [LINE.match(line) for line in printed if line.startswith("train step") and "done" not in line]
    assert [(m.group(1), m.group(2)) for m in steps] == [("1", "3"), ("2", "3"), ("3", "3")], printed
    assert re.search(r"^train step 3/3 \| train/loss [\d.]+ \| done in", "\n".join(printed), re.M)
    assert [line.split(" | ")[0] for line in printed if line.startswith("test batch")] == ["test batch 1/2"] * 1 + [
        "test batch 2/2"] * 2  # fmt: skip
    assert not any("\r" in line for line in printed)


def test_epoch_header_never_shows_a_negative_count(tmp_path):
    """A run bounded by max_steps (max_epochs becomes -1): Lightning's Rich bar reads "Epoch 0/-2", ours "Epoch 0";
    bounded by max_epochs, ours still shows the last epoch's index."""

    def rendered(bar_class: type[RichProgressBar], **limits: int) -> str:
        screen = io.StringIO()
        bar = bar_class(console_kwargs={"file": screen, "width": 100, "force_terminal": True})
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                            default_root_dir=str(tmp_path), callbacks=[bar], limit_train_batches=2,
                            **limits)  # fmt: skip
        trainer.fit(ToyRegression())
        return screen.getvalue()

    assert "Epoch 0/-2" in rendered(RichProgressBar, max_steps=2)  # what Lightning's own bar shows
    shown = rendered(TerminalProgressBar, max_steps=2)
    assert "Epoch 0" in shown and "/-" not in shown
    assert "Epoch 1/1" in rendered(TerminalProgressBar, max_epochs=2)


def test_synthesis_prints_lines_when_stdout_is_not_a_terminal(tiny_model, tmp_path, monkeypatch):
    from msathinker.synthesis import RulesTeacher, run_synthesis

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    run_synthesis(teacher=RulesTeacher(), output=str(tmp_path / "out.jsonl"), dataset="demo_mosi",
                  processor_path=tiny_model, max_clips=5, batch_size=2, experiment=None,
                  progress_every_n_clips=2)  # fmt: skip
    printed = [line for line in out.getvalue().splitlines() if line.startswith("synthesizing")]
    assert [line.split(" | ")[0] for line in printed] == [f"synthesizing train {n}/5" for n in (2, 4, 5)]
    assert all(re.search(r"clip/s \| ETA \d+:\d\d:\d\d$", line) for line in printed[:2]) and "done in" in printed[2]
