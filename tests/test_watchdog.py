"""HangWatchdog on a toy module whose step 6 hangs: the stacks are dumped and training goes on, or a checkpoint
is saved and the process exits with the watchdog's status, and a restart resumes from it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from callbacks import HangWatchdog
from tests.toy_training import ToyRegression, saved_step, toy_trainer

REPO = Path(__file__).resolve().parents[1]


def test_a_hung_step_dumps_every_thread_and_training_goes_on(tmp_path, capfd, caplog):
    watchdog = HangWatchdog(factor=5, min_seconds=2, warmup_steps=3, poll_seconds=0.05)

    def wait_for_the_watchdog(step: int) -> None:
        """Step 6 hangs until the watchdog has reported it (at most a minute)."""
        deadline = time.monotonic() + 60
        while step == 6 and not watchdog.hangs and time.monotonic() < deadline:
            time.sleep(0.01)

    trainer = toy_trainer(tmp_path, 10, [watchdog])
    trainer.fit(ToyRegression(wait_for_the_watchdog))
    assert trainer.global_step == 10
    assert [(h["step"], h["batch"]) for h in watchdog.hangs] == [(6, 6)]
    assert watchdog.hangs[0]["seconds"] > 2
    assert "HangWatchdog: training step 6 (batch 6) has run" in caplog.text  # the log (stderr outside pytest)
    assert "the stacks of all threads" in caplog.text
    err = capfd.readouterr().err
    assert "Thread 0x" in err and "in wait_for_the_watchdog" in err and "in training_step" in err  # faulthandler


def test_checkpoint_and_exit_saves_exits_non_zero_and_the_restart_resumes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tests.toy_training", "hang", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 75, result.stderr[-3000:]
    assert "HangWatchdog: training step 6 (batch 6)" in result.stderr and "in sleep_at_six" in result.stderr
    assert "HangWatchdog: saved" in result.stderr and "exiting with status 75" in result.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 6  # the periodic saves were at steps 4 and 8
    trainer = toy_trainer(tmp_path, 10)
    trainer.fit(ToyRegression(), ckpt_path="last")
    assert trainer.global_step == 10


def test_checkpoint_and_exit_needs_a_model_checkpoint(tmp_path):
    watchdog = HangWatchdog(on_hang="checkpoint_and_exit")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, callbacks=[watchdog],
                        default_root_dir=str(tmp_path), enable_progress_bar=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"has none: add a lightning\.pytorch\.callbacks\.ModelCheckpoint"):
        trainer.fit(ToyRegression())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"factor": 1}, "factor > 1"), ({"warmup_steps": 0}, "warmup_steps >= 1"), ({"exit_code": 0}, "must be non-zero")],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HangWatchdog(**kwargs)


def test_selectable_from_yaml(tiny_model, tmp_path):
    from msathinker.cli import MSACLI, cli_kwargs

    config = tmp_path / "watchdog.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: callbacks.HangWatchdog\n"
                      "      init_args: {factor: 20, min_seconds: 600, on_hang: exit}\n")  # fmt: skip
    cli = MSACLI(**cli_kwargs(), run=False, args=[
        "--config", str(REPO / "experiments/quickstart/sft.yaml"), "--config", str(config), "--trainer.logger", "false",
        "--model.init_args.policy.model_path", tiny_model, "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    (watchdog,) = [c for c in cli.trainer.callbacks if isinstance(c, HangWatchdog)]
    assert (watchdog.factor, watchdog.min_seconds, watchdog.on_hang) == (20, 600, "exit")
