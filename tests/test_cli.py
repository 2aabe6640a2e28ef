"""The command line: fast top-level help, project commands, LightningCLI config printing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msathinker", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_help_lists_every_command_without_importing_lightning():
    result = run("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "tiny-checkpoint", "demo-data", "recipe", "analyze"):
        assert command in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, msathinker.__main__ as m; m.main(['--help']); print('lightning' in sys.modules)"],  # noqa: E501
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert probe.stdout.strip().endswith("False")


def test_unknown_command():
    result = run("train")
    assert result.returncode != 0 and "unknown command 'train'" in result.stderr


def test_print_config_resolves_the_quickstart():
    result = run("fit", "--config", "experiments/quickstart/sft.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"] == "msathinker.SFTModule"
    assert config["model"]["init_args"]["policy"]["model_path"] == "tiny-small"
    assert "processor_path" not in config["data"]["init_args"]  # linked from the model's checkpoint


def test_every_experiment_config_parses(monkeypatch, tmp_path):
    """Each experiment YAML (ablation partials on top of their base) parses and instantiates, in-process."""
    from msathinker.cli import MSACLI, cli_kwargs

    monkeypatch.chdir(REPO)
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        text = path.read_text()
        if "recipe" in path.name or "synthesize" in path.name or path.name == "sft_only.yaml" or "smoke" in path.parts:
            continue
        configs = ["--config", str(path)]
        if "class_path" not in (yaml.safe_load(text).get("model") or {}):  # a partial config: put its base first
            suite = "msa_thinker" if path.parent.name == "msa_thinker" else "quickstart"
            stage = "hint_grpo" if "hint" in text or "reward" in text or "grpo" in path.name else "sft"
            configs = ["--config", f"experiments/{suite}/{stage}.yaml", *configs]
        cli = MSACLI(
            **cli_kwargs(),
            run=False,
            args=[*configs, "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"],
        )
        assert cli.model is not None and cli.datamodule is not None, path


def test_demo_data_command(tmp_path):
    from msathinker.demo.data import DOMAINS

    result = run("demo-data", str(tmp_path / "sims"), "--domain", "demo_sims", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "sims" / "label.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + sum(DOMAINS["demo_sims"].splits.values())


@pytest.mark.parametrize(
    ("override", "message"),
    [(["--model.init_args.policy.quantization", "nf4"], "cannot be sharded with FSDP2"),
     (["--trainer.strategy.init_args.tensor_parallel_size", "2", "--trainer.strategy.init_args.data_parallel_size",
       "1", "--trainer.devices", "2"], "tensor_parallel_size is 2")],
)  # fmt: skip
def test_fsdp2_settings_it_cannot_run_fail_before_loading(override, message, tmp_path):
    """ModelParallelStrategy with a 4-bit base or tensor parallelism: a clear error from configure_model, raised
    before the policy is built."""
    strategy = ["--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy",
                "--trainer.strategy.init_args.data_parallel_size", "1"]  # fmt: skip
    result = run("fit", "--config", "experiments/quickstart/sft.yaml", *strategy, "--trainer.logger", "false",
                 "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path),
                 *override)  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
    assert "configure_model" in result.stderr and "build_policy" not in result.stderr


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("model.init_args.policy.model_path", "required: policy.model_path"),
        ("data.init_args.dataset", "required: dataset"),
    ],
)
def test_a_real_config_without_model_path_or_dataset_is_an_error(drop, message, tmp_path, capsys):
    """No demo default hides behind a missing key: the real SFT recipe without its model path or dataset stops with
    an error naming the key (it used to train the random-init tiny model on the synthetic clips)."""
    from msathinker.cli import MSACLI, cli_kwargs

    config = yaml.safe_load((REPO / "experiments/msa_thinker/sft.yaml").read_text())
    *parents, key = drop.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    del node[key]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        MSACLI(**cli_kwargs(), run=False, args=["--config", str(path), "--trainer.logger", "false"])
    assert message in capsys.readouterr().err


def test_checkpoints_go_under_the_run_directory(tmp_path):
    """A ModelCheckpoint without dirpath writes to <default_root_dir>/checkpoints: the run directory is said once."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from msathinker.cli import MSACLI, cli_kwargs

    args = ["--config", str(REPO / "experiments/quickstart/sft.yaml"), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    cli = MSACLI(**cli_kwargs(), run=False, args=args)
    (checkpoint,) = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint.dirpath == str(tmp_path / "run" / "checkpoints")
