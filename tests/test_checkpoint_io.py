"""Checkpoints survive a kill during their write: AtomicCheckpointIO (files, installed by the CLI) and
msathinker.sharding.ModelParallelStrategy (FSDP2 checkpoint directories)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msathinker import checkpoints
from msathinker.checkpoints import AtomicCheckpointIO, replace_directory
from tests.toy_training import ToyRegression, saved_step, toy_trainer

REPO = Path(__file__).resolve().parents[1]
KILLS = 10


def test_save_replaces_whole_files_and_clears_torn_ones(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    torn = path.with_name(".last.ckpt.0123456789ab.tmp")  # what a killed save leaves
    torn.write_bytes(b"PK\x03\x04 half a zip")
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(Exception, match=r"pickle|Can't"):  # a save that fails leaves the previous file
        io.save_checkpoint({"global_step": 3, "bad": lambda: 0}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("kind", ["file", "fsdp2"])
def test_kill_during_save_always_leaves_a_checkpoint_to_resume(tmp_path, kind):
    """10 runs killed with SIGKILL in the middle of saving last.ckpt (a file: halfway through writing it; FSDP2: its
    directory written beside it, not yet swapped in), each resumed with ckpt_path="last": each resume loads the
    checkpoint of the step before and saves the next; the 11th run trains to the end."""
    command = [sys.executable, "-m", "tests.toy_training", "kill-during-save", str(tmp_path), str(KILLS)]
    result = subprocess.run([*command, *(["fsdp2"] if kind == "fsdp2" else [])], cwd=REPO, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    for run in runs[:KILLS]:
        assert run["signal"] == signal.SIGKILL, run
        assert run["saved_step"] == run["resumed_from"] + 1 == run["run"] + 1, run  # loaded, trained, saved
        assert len(run["torn_files"]) == 1, run  # killed in the middle of the second save
    final = runs[KILLS]
    assert final["exit_code"] == 0 and final["resumed_from"] == KILLS and final["saved_step"] == KILLS + 2
    assert final["torn_files"] == []  # the first save after a kill clears the torn file
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert saved_step(last) == KILLS + 2 and last.is_dir() == (kind == "fsdp2")


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_directory(tmp_path, monkeypatch, exchange):
    """A new checkpoint directory takes the place of nothing, of the previous directory, or of a file: by an
    atomic exchange (Linux) or, where the system has none, by two renames. Nothing else is left, not even the old
    checkpoint a kill between those two renames leaves (as last.old.ckpt, which --ckpt_path last finds)."""
    if not exchange:
        monkeypatch.setattr(checkpoints, "_exchange", lambda first, second: False)
    target = tmp_path / "last.ckpt"

    def written(step: int) -> Path:
        directory = tmp_path / f".last.ckpt.{step}.tmp"
        directory.mkdir()
        (directory / "meta.pt").write_text(str(step))
        return directory

    replace_directory(written(1), target)
    replace_directory(written(2), target)
    assert (target / "meta.pt").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    shutil.rmtree(target)
    target.write_bytes(b"a checkpoint file")
    replace_directory(written(3), target)
    assert (target / "meta.pt").read_text() == "3" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    target.rename(tmp_path / "last.old.ckpt")  # killed between the two renames
    replace_directory(written(4), target)
    assert (target / "meta.pt").read_text() == "4" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_trainer_resumes_from_an_atomic_checkpoint(tmp_path):
    toy_trainer(tmp_path, 3).fit(ToyRegression())
    trainer = toy_trainer(tmp_path, 5)
    trainer.fit(ToyRegression(), ckpt_path="last")
    assert trainer.global_step == 5 and saved_step(tmp_path / "checkpoints" / "last.ckpt") == 5


def test_cli_installs_the_atomic_writer_unless_the_config_names_one(tiny_model, tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from msathinker.cli import MSACLI, cli_kwargs

    args = ["--config", str(REPO / "experiments/quickstart/sft.yaml"), "--model.init_args.policy.model_path",
            tiny_model, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = MSACLI(**cli_kwargs(), run=False, args=args)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    own = MSACLI(
        **cli_kwargs(), run=False, args=[*args, "--trainer.plugins", "lightning.pytorch.plugins.TorchCheckpointIO"]
    )
    assert type(own.trainer.strategy.checkpoint_io) is TorchCheckpointIO
