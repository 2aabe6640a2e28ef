"""Recipe parity: every real recipe of experiments/msa_thinker/ runs on CPU as a researcher runs it on GPUs, with
only the model (a tiny checkpoint), the data (the demo), sizes, the device and the process count overridden by the
partial configs of experiments/smoke/, put after it. Precision, optimizer and lr, loss type, beta and reference,
hints, rewards, callbacks, accumulation, checkpointing and logger all come from the recipe. The stages chain as on
the GPUs: the SFT run writes runs/msa-thinker-sft/adapter, the path Hint-GRPO's adapter_path names.

Each run checks that the recipe learns: the trainable weights (recorded by tests/recipe_probe.py) moved by an amount
consistent with the recipe's learning rate and stayed in fp32. Select these tests with `pytest -k recipe_parity`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_distributed import free_port

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"1gpu": "", "1gpu_qlora": "_1gpu_qlora", "8gpu_fsdp2": "_8gpu_fsdp2"}
"""Recipe variant -> the suffix of its partial config in experiments/msa_thinker/ ("" = the base recipe)."""
STEPS = 4
"""Optimizer steps of the smoke runs (experiments/smoke/*_cpu.yaml)."""


def msathinker(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m msathinker ARGS` in `cwd`, with MLflow, temp files and the rendezvous port kept there."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "TMPDIR": str(cwd), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "msathinker", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def configs(stage: str, variant: str) -> list[str]:
    """--config arguments: the recipe, its variant, the stage's smoke overrides, and the process count for FSDP2."""
    files = [f"experiments/msa_thinker/{stage}.yaml"]
    if VARIANTS[variant]:
        files.append(f"experiments/msa_thinker/{stage}{VARIANTS[variant]}.yaml")
    files.append(f"experiments/smoke/{stage}_cpu.yaml")
    if "fsdp2" in variant:
        files.append("experiments/smoke/fsdp2_cpu.yaml")
    return [arg for f in files for arg in ("--config", str(REPO / f))]


def probe(directory: Path, steps: list[int]) -> list[str]:
    callback = {"class_path": "tests.recipe_probe.TrainableWeights",
                "init_args": {"directory": str(directory), "steps": steps}}  # fmt: skip
    return ["--trainer.callbacks+", json.dumps(callback)]


def weights(directory: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(directory / f"{step}.pt")


def largest_change(before: dict, after: dict, part: str) -> float:
    return max(float((after[n] - before[n]).abs().max()) for n in before if part in n)


def mlflow_run(cwd: Path, run_name: str) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Params and metric histories of the recipe's MLflow run `run_name` in experiment msa-thinker."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("msa-thinker")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}
    return run.data.params, history


_sft_runs: dict[str, Path] = {}


def sft_run(variant: str, tmp_path_factory) -> Path:
    """The directory of the SFT smoke run of `variant` (run once per session; Hint-GRPO continues from it)."""
    if variant not in _sft_runs:
        cwd = tmp_path_factory.mktemp(f"recipe-{variant}")
        msathinker(cwd, "fit", *configs("sft", variant), *probe(cwd / "probe-sft", [0, STEPS]))
        _sft_runs[variant] = cwd
    return _sft_runs[variant]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recipe_parity_sft(variant, tmp_path_factory):
    cwd = sft_run(variant, tmp_path_factory)
    start, end = weights(cwd / "probe-sft", 0), weights(cwd / "probe-sft", STEPS)
    assert set(end["_dtypes"].values()) == {"torch.float32"}  # LoRA (and its optimizer state) in fp32
    lr = 1e-4  # the recipe's AdamW lr: Adam moves each weight by about lr per step
    assert all(float(v.abs().max()) == 0 for n, v in start.items() if "lora_B" in n)  # a fresh adapter
    assert 0.1 * lr < largest_change(start, end, "lora_B") <= 3 * STEPS * lr
    assert 0.1 * lr < largest_change(start, end, "lora_A") <= 3 * STEPS * lr  # A's gradient arrives at step 2
    assert (cwd / "runs/msa-thinker-sft/adapter/adapter_model.safetensors").is_file()
    params, metrics = mlflow_run(cwd, "sft")
    assert params["trainer.precision"] == "bf16-mixed" and params["model.init_args.policy.dtype"] == "bfloat16"
    assert metrics["train/loss"] and "val/demo_sims/MAE" in metrics


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recipe_parity_hint_grpo(variant, tmp_path_factory):
    cwd = sft_run(variant, tmp_path_factory)
    msathinker(cwd, "fit", *configs("hint_grpo", variant), *probe(cwd / "probe-grpo", [1, STEPS]))
    first, last = weights(cwd / "probe-grpo", 1), weights(cwd / "probe-grpo", STEPS)
    assert set(last["_dtypes"].values()) == {"torch.float32"}
    lr = 1e-6  # the recipe's lr: an update bf16 weights would round away
    assert 0.1 * lr < largest_change(first, last, "lora_A") <= 3 * (STEPS - 1) * lr
    params, metrics = mlflow_run(cwd, "hint_grpo")
    assert params["model.init_args.grpo.beta"] == "0.04" and params["model.init_args.grpo.loss_type"] == "dapo"
    assert len(metrics["train/reward"]) == STEPS and "train/kl" in metrics and "train/hint_rate" in metrics
    assert min(metrics["train/frac_reward_zero_std"]) < 1  # the groups had reward variance: a gradient
    assert "val/demo_sims/MAE" in metrics


def test_recipe_parity_synthesize(tiny_dc, tmp_path):
    from tests.openai_server import ChatServer, TinyModelResponder

    with ChatServer(TinyModelResponder(tiny_dc)) as url:
        args = ["--config", str(REPO / "experiments/msa_thinker/synthesize.yaml"),
                "--config", str(REPO / "experiments/smoke/synthesize_cpu.yaml"),
                "--teacher.init_args.base_url", url]  # fmt: skip
        result = msathinker(tmp_path, "synthesize", *args)
    records = [json.loads(line) for line in (tmp_path / "runs/msa-thinker-synthesis/sims_train.jsonl").open()]
    assert len(records) == 8 and {r["teacher"] for r in records} == {"openai:tiny-dc"}
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["kept"] + summary["rejected"] == 8


def test_recipe_parity_recipe(tiny_dc, tmp_path):
    from tests.openai_server import ChatServer, TinyModelResponder

    with ChatServer(TinyModelResponder(tiny_dc)) as url:
        args = ["--config", str(REPO / "experiments/msa_thinker/recipe.yaml"),
                "--config", str(REPO / "experiments/smoke/recipe_cpu.yaml"),
                "--synthesize_args+", "--teacher.init_args.base_url", "--synthesize_args+", url]  # fmt: skip
        msathinker(tmp_path, "recipe", *args)
    summary = json.loads((tmp_path / "runs/msa-thinker-recipe/summary.json").read_text())
    assert set(summary) == {"synthesis", "sft", "hint_grpo"}
    for stage in ("sft", "hint_grpo"):
        assert "test/demo_sims/MAE" in summary[stage] and "test/demo_mosi/Non0_acc_2" in summary[stage]
    assert (tmp_path / "runs/msa-thinker-recipe/hint_grpo/adapter/adapter_config.json").is_file()
