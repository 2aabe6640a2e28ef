"""The command line: fast top-level help, project commands, LightningCLI config printing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msathinker", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_help_lists_every_command_without_importing_lightning():
    result = run("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "tiny-checkpoint", "demo-data", "recipe"):
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
    bases = {"sft": "experiments/quickstart/sft.yaml", "grpo": "experiments/quickstart/hint_grpo.yaml"}
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        text = path.read_text()
        if "recipe" in path.name or "synthesize" in path.name or path.name == "sft_only.yaml":
            continue
        configs = ["--config", str(path)]
        if "class_path" not in text or "ablations" in str(path):
            base = bases["grpo"] if "hint" in text or "reward" in text else bases["sft"]
            configs = ["--config", base, *configs]
        cli = MSACLI(
            **cli_kwargs(),
            run=False,
            args=[*configs, "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"],
        )
        assert cli.model is not None and cli.datamodule is not None, path


def test_demo_data_command(tmp_path):
    from msathinker.demo_data import DOMAINS

    result = run("demo-data", str(tmp_path / "sims"), "--domain", "demo_sims", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "sims" / "label.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + sum(DOMAINS["demo_sims"].splits.values())
