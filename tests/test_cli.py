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
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        text = path.read_text()
        if "recipe" in path.name or "synthesize" in path.name or path.name == "sft_only.yaml":
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
    from msathinker.demo_data import DOMAINS

    result = run("demo-data", str(tmp_path / "sims"), "--domain", "demo_sims", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "sims" / "label.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + sum(DOMAINS["demo_sims"].splits.values())


@pytest.mark.parametrize("stage", ["sft", "hint_grpo"])
def test_gpu_recipes_compose_on_their_base(stage):
    """The 8-GPU FSDP2 and 1-GPU QLoRA recipes resolve to what docs/memory.md assumes (printed, not run: no GPU)."""
    base = f"experiments/msa_thinker/{stage}.yaml"
    recipe = f"experiments/msa_thinker/{stage}"
    fsdp = run("fit", "--config", base, "--config", f"{recipe}_8gpu_fsdp2.yaml", "--print_config")
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    trainer = yaml.safe_load(fsdp.stdout)["trainer"]
    assert trainer["devices"] == 8 and trainer["precision"] == "bf16-true"
    assert trainer["strategy"]["class_path"] == "msathinker.sharding.ModelParallelStrategy"
    assert trainer["strategy"]["init_args"]["data_parallel_size"] == 8
    qlora = run("fit", "--config", base, "--config", f"{recipe}_1gpu_qlora.yaml", "--print_config")
    assert qlora.returncode == 0, qlora.stderr[-2000:]
    config = yaml.safe_load(qlora.stdout)
    policy = config["model"]["init_args"]["policy"]
    assert (policy["quantization"], policy["dtype"], policy["gradient_checkpointing"]) == ("nf4", "bfloat16", True)
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["data"]["init_args"]["max_pixels"] == 100352 and config["data"]["init_args"]["batch_size"] == 1


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
