"""Recipe parity: every real recipe of experiments/msa_thinker/ runs on CPU as a researcher runs it on GPUs, with
only the model (a tiny checkpoint), the data (the demo), sizes, the device and the process count overridden by the
partial configs of experiments/smoke/, put after it. Precision, optimizer and lr, loss type, beta and reference,
hints, rewards, callbacks, accumulation, checkpointing and logger all come from the recipe.

- recipe.yaml runs end to end (synthesize.yaml against a local OpenAI-compatible server, sft.yaml, hint_grpo.yaml,
  the in-domain and cross-domain tests); the synthesize, sft and hint_grpo tests check its stages.
- The 1-GPU QLoRA and 8-GPU FSDP2 variants (2 processes here) run as `fit` on their base recipe, SFT then Hint-GRPO
  in one directory: the SFT run writes runs/msa-thinker-sft/adapter, the path Hint-GRPO's adapter_path names.

Each training run checks that the recipe learns: the trainable weights (recorded by tests/recipe_probe.py) stayed
fp32 and moved by an amount consistent with the recipe's learning rate. Select these tests with
`pytest -k recipe_parity`.
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
STEPS = 4
"""Optimizer steps of the smoke runs (experiments/smoke/*_cpu.yaml)."""
SFT_LR, GRPO_LR = 1e-4, 1e-6
"""The recipes' AdamW learning rates; Adam moves each weight by about lr per step."""


def msathinker(cwd: Path, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m msathinker ARGS` in `cwd`, with MLflow, temp files and the rendezvous port kept there."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "TMPDIR": str(cwd), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    if processes > 1:  # one thread each on the 2 cores
        env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-m", "msathinker", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def configs(*files: str) -> list[str]:
    return [arg for f in files for arg in ("--config", str(REPO / f))]


def probe(directory: Path, steps: list[int]) -> list[str]:
    """Append tests.recipe_probe.TrainableWeights to the run's callbacks (the recipe's own ones stay)."""
    callback = {"class_path": "tests.recipe_probe.TrainableWeights",
                "init_args": {"directory": str(directory), "steps": steps}}  # fmt: skip
    return ["--trainer.callbacks+", json.dumps(callback)]


def largest_change(directory: Path, first: int, last: int, part: str) -> float:
    before, after = torch.load(directory / f"{first}.pt"), torch.load(directory / f"{last}.pt")
    assert set(after["_dtypes"].values()) == {"torch.float32"}  # trainable weights (and AdamW's state) in fp32
    return max(float((after[n] - before[n]).abs().max()) for n in before if part in n)


def check_sft_learned(directory: Path) -> None:
    start = torch.load(directory / "0.pt")
    assert all(float(v.abs().max()) == 0 for n, v in start.items() if "lora_B" in n)  # a fresh adapter
    assert 0.1 * SFT_LR < largest_change(directory, 0, STEPS, "lora_B") <= 3 * STEPS * SFT_LR
    assert 0.1 * SFT_LR < largest_change(directory, 0, STEPS, "lora_A") <= 3 * STEPS * SFT_LR  # from step 2 on


def check_grpo_learned(directory: Path) -> None:
    """The LoRA A matrices change between step 1 and the last step by about the recipe's tiny lr: bf16 weights
    would round such updates away."""
    assert 0.1 * GRPO_LR < largest_change(directory, 1, STEPS, "lora_A") <= 3 * (STEPS - 1) * GRPO_LR


def mlflow_run(cwd: Path, run_name: str) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Params and metric histories of the MLflow run `run_name` in the recipes' experiment msa-thinker."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("msa-thinker")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}
    return run.data.params, history


def check_grpo_metrics(metrics: dict[str, list[float]]) -> None:
    assert len(metrics["train/reward"]) == STEPS and "train/kl" in metrics and "train/hint_rate" in metrics
    assert min(metrics["train/frac_reward_zero_std"]) < 1  # some group had reward variance: a gradient


@pytest.fixture(scope="module")
def recipe_run(tiny_dc, tmp_path_factory) -> Path:
    """The directory of one run of experiments/msa_thinker/recipe.yaml with its smoke overrides."""
    from tests.openai_server import ChatServer, TinyModelResponder

    cwd = tmp_path_factory.mktemp("recipe")
    (cwd / "experiments").symlink_to(REPO / "experiments")  # the recipe names its stage configs from the repo root
    with ChatServer(TinyModelResponder(tiny_dc)) as url:
        msathinker(
            cwd, "recipe", *configs("experiments/msa_thinker/recipe.yaml", "experiments/smoke/recipe_cpu.yaml"),
            "--synthesize_args+=--teacher.init_args.base_url", f"--synthesize_args+={url}",
            *(f"--{stage}_args+={arg}" for stage, name in (("sft", "sft"), ("grpo", "grpo"))
              for arg in probe(cwd / f"probe-{name}", [0, 1, STEPS])),
        )  # fmt: skip
    return cwd


def test_recipe_parity_synthesize(recipe_run):
    records = [json.loads(line) for line in (recipe_run / "runs/msa-thinker-recipe/synthesis/records.jsonl").open()]
    assert len(records) == 8 and {r["teacher"] for r in records} == {"openai:tiny-dc"}
    _, metrics = mlflow_run(recipe_run, "synthesis")
    assert metrics["clips"] == [8.0]


def test_recipe_parity_sft(recipe_run):
    check_sft_learned(recipe_run / "probe-sft")
    params, metrics = mlflow_run(recipe_run, "sft")
    assert params["trainer.precision"] == "bf16-mixed" and params["model.init_args.policy.dtype"] == "bfloat16"
    assert params["data.init_args.system_prompt"].startswith("You are Qwen, a virtual human")
    assert "val/demo_sims/MAE" in metrics  # the recipe logs train/loss every 10 steps: not in a 4-step run


def test_recipe_parity_hint_grpo(recipe_run):
    check_grpo_learned(recipe_run / "probe-grpo")
    params, metrics = mlflow_run(recipe_run, "hint_grpo")
    assert params["model.init_args.grpo.beta"] == "0.04" and params["model.init_args.grpo.loss_type"] == "dapo"
    check_grpo_metrics(metrics)


def test_recipe_parity_recipe(recipe_run):
    summary = json.loads((recipe_run / "runs/msa-thinker-recipe/summary.json").read_text())
    assert set(summary) == {"synthesis", "sft", "hint_grpo"}
    for stage in ("sft", "hint_grpo"):
        assert "test/demo_sims/MAE" in summary[stage] and "test/demo_mosi/Non0_acc_2" in summary[stage]
    assert (recipe_run / "runs/msa-thinker-recipe/hint_grpo/adapter/adapter_config.json").is_file()


VARIANTS = {
    "1gpu_qlora": (["{stage}_1gpu_qlora.yaml"], []),
    "8gpu_fsdp2": (["{stage}_8gpu_fsdp2.yaml"], []),
    "qwen3_omni_8gpu_fsdp2": (
        ["{stage}_8gpu_fsdp2.yaml", "{stage}_qwen3_omni_8gpu_fsdp2.yaml"],
        ["qwen3_omni_cpu.yaml"],
    ),
}
"""Variant -> its partial configs in experiments/msa_thinker/ (after the stage's recipe) and its extra smoke files."""


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recipe_parity_variant(variant, tmp_path):
    """SFT, then Hint-GRPO from its adapter, with the variant's partial configs on its base recipe."""
    from msathinker.assets import resolve_model_path

    resolve_model_path("tiny-qwen3-dc" if "qwen3" in variant else "tiny-dc")  # built once, before the processes
    recipes, smoke = VARIANTS[variant]
    processes = ["experiments/smoke/fsdp2_cpu.yaml"] if "fsdp2" in variant else []
    for stage in ("sft", "hint_grpo"):
        files = [f"experiments/msa_thinker/{stage}.yaml", *(f"experiments/msa_thinker/{r.format(stage=stage)}"
                 for r in recipes), f"experiments/smoke/{stage}_cpu.yaml", *(f"experiments/smoke/{f}" for f in smoke),
                 *processes]  # fmt: skip
        msathinker(tmp_path, "fit", *configs(*files), *probe(tmp_path / f"probe-{stage}", [0, 1, STEPS]),
                   processes=2 if processes else 1)  # fmt: skip
    check_sft_learned(tmp_path / "probe-sft")
    check_grpo_learned(tmp_path / "probe-hint_grpo")
    params, metrics = mlflow_run(tmp_path, "hint_grpo")
    assert params["model.init_args.policy.quantization"] == ("nf4" if "qlora" in variant else "none")
    check_grpo_metrics(metrics)


def test_recipe_parity_qwen3_omni_local_teacher(tmp_path):
    """synthesize.yaml with the local Qwen3-Omni teacher (TransformersTeacher) in place of the endpoint."""
    from msathinker.assets import resolve_model_path

    resolve_model_path("tiny-qwen3-dc")
    files = ["experiments/msa_thinker/synthesize.yaml", "experiments/smoke/synthesize_cpu.yaml",
             "experiments/msa_thinker/synthesize_qwen3_omni_local.yaml",
             "experiments/smoke/synthesize_qwen3_omni_local_cpu.yaml"]  # fmt: skip
    msathinker(tmp_path, "synthesize", *configs(*files))
    records = [json.loads(line) for line in (tmp_path / "runs/msa-thinker-synthesis/sims_train.jsonl").open()]
    assert len(records) == 8 and {r["teacher"] for r in records} == {"transformers:tiny-qwen3-dc"}
    assert any(r["kept"] for r in records)  # the pre-trained tiny teacher writes the DC format
