"""Two processes on CPU (gloo), launched by Lightning from `python -m msathinker fit` with the strategy in YAML:
DDP and FSDP2 (ModelParallelStrategy) give the same per-step losses and final adapter as one process with the same
global batch, for SFT and Hint-GRPO; an FSDP2 run saved (distributed checkpoint) and resumed ends where an
uninterrupted one does. Also the pieces that make this hold: the rank-sharded resumable sampler and the
per-completion seeded sampler (exact distribution, independent of the batch a row is in).

SGD keeps the weight comparison meaningful: Adam divides each gradient by its own magnitude, which turns fp32
rounding noise on near-zero gradients (e.g. LoRA A at step 0, while B is 0) into full-size updates.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from callbacks import Reward, RewardInput
from data_modules.sampler import EpochSeededSampler
from msathinker.rollout import PerRowGumbelSampling, Row, sample, split_prompt_media, unpadded_prompts

REPO = Path(__file__).resolve().parents[1]
STEPS = 2
RTOL, ATOL = 1e-4, 1e-6
"""Per-step train metrics (loss; GRPO also mean reward) of 1 and 2 processes agree to these tolerances (fp32
reductions in another order). GRPO's loss with num_iterations 1 is ~0 (the ratio is 1 and the advantages are
centred): the reward (same completions sampled) and the weights are what tell runs apart there."""
WEIGHT_ATOL = 1e-5
"""Final adapter weights (|w| up to ~0.1) agree to this absolute tolerance."""

STRATEGIES = {
    "single": None,
    "ddp": "ddp",
    "fsdp2": {
        "class_path": "msathinker.sharding.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
    },
}


class VowelReward(Reward):
    """Fraction of vowels in the completion: varies between the random tiny model's completions, so the groups
    have nonzero advantages and GRPO updates the weights."""

    name = "vowels"

    def score(self, sample: RewardInput) -> float:
        text = sample.completion.lower()
        return sum(c in "aeiou" for c in text) / max(len(text), 1)


def test_sampler_gives_two_ranks_the_global_batches_of_one_process():
    dataset = list(range(10))
    one = list(EpochSeededSampler(dataset, seed=3))
    ranks = [list(EpochSeededSampler(dataset, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    for step in range(2):  # batch 2 per rank = batch 4 in one process
        assert sorted(ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]) == sorted(
            one[4 * step : 4 * step + 4]
        )
    assert len(ranks[0]) == len(ranks[1]) == 5
    resumed = [list(EpochSeededSampler(dataset, seed=3, resume_skip=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert resumed == [ranks[0][2:], ranks[1][2:]]  # after 1 step of 2 x 2 samples
    odd = [list(EpochSeededSampler(list(range(5)), seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 3 and set(odd[0] + odd[1]) == set(range(5))  # padded, nothing lost


def test_per_row_gumbel_sampling_draws_from_the_warped_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    temperature, top_p, n = 0.7, 0.9, 20000
    probs = torch.softmax(logits / temperature, -1)
    keep = (probs.cumsum(-1) - probs) < top_p  # sorted descending already: the nucleus
    expected = torch.where(keep, probs, 0.0) / probs[keep].sum()
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    picks = PerRowGumbelSampling(temperature, top_p, generators)(None, logits.expand(n, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=len(logits)).float() / n
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=4 * (0.25 / n) ** 0.5)
    assert frequencies[-1] == 0  # outside the nucleus


def test_per_row_seeds_make_completions_independent_of_the_batch(tiny_model, tmp_path):
    from data_modules import MSADataModule
    from msathinker.policy import LoraOptions, PolicyOptions, build_policy

    model, processor = build_policy(PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4)))
    dm = MSADataModule(
        dataset="demo_mosi", processor_path=tiny_model, max_clips=3, eval_batch_size=3, media_cache_dir=str(tmp_path)
    )
    dm.setup("validate")
    inputs = next(iter(dm.val_dataloader()))["inputs"]
    media = split_prompt_media(model, inputs, encode_once=True)
    prompts = unpadded_prompts(inputs)
    options = dict(max_new_tokens=10, temperature=1.0, top_p=1.0, use_audio_in_video=False)

    def generate(indices: list[int]) -> list[list[int]]:
        rows = [Row(prompts[i], media[i]) for i in indices]
        generators = [torch.Generator().manual_seed(100 + i) for i in indices]
        return [c.tolist() for c in sample(model, rows, processor.tokenizer, generators=generators, **options)[0]]

    batched = generate([0, 1, 2])
    assert [generate([i])[0] for i in range(3)] == batched
    assert generate([2, 0]) == [batched[2], batched[0]]
    assert len({tuple(c) for c in batched}) == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sft_model(tiny_model: str) -> dict:
    return {
        "class_path": "msathinker.SFTModule",
        "init_args": {
            "policy": {
                "model_path": tiny_model,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "modules_to_save": ["lm_head"]},
            },
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
        },
    }


def grpo_model(tiny_model: str) -> dict:
    return {
        "class_path": "msathinker.HintGRPOModule",
        "init_args": {
            "policy": {"model_path": tiny_model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "grpo": {"num_generations": 4, "max_completion_length": 8, "per_completion_seeds": True},
            "rewards": [{"class_path": "tests.test_distributed.VowelReward"}],
            "hint": {"class_path": "callbacks.PolarityHint", "init_args": {"trigger": "always"}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
            "generation": {"max_new_tokens": 4},
        },
    }


def trainer_config(root: Path, strategy: str) -> dict:
    """The Trainer settings every run here shares: CPU, 1 or 2 processes with the strategy, a CSV log in root."""
    trainer = {
        "accelerator": "cpu",
        "devices": 1 if strategy == "single" else 2,
        "enable_progress_bar": False,
        "default_root_dir": str(root),
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(root), "name": "csv", "version": 0},
        },
    }
    if STRATEGIES[strategy] is not None:
        trainer["strategy"] = STRATEGIES[strategy]
    return trainer


def data_config(media: Path, **init_args) -> dict:
    return {
        "class_path": "data_modules.MSADataModule",
        "init_args": {"dataset": "demo_mosi", "eval_batch_size": 2, "media_cache_dir": str(media), **init_args},
    }


def launch(root: Path, config: dict, command: str = "fit", *args: str) -> list[dict[str, str]]:
    """Run `python -m msathinker <command>` on `config` (its processes on a free port, MLflow and temp files in
    root); returns the rows of the CSV log."""
    path = root / "config.in.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "TMPDIR": str(root),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}  # fmt: skip
    command_line = [sys.executable, "-m", "msathinker", command, "--config", str(path), *args]
    result = subprocess.run(command_line, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(root / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def fit(
    root: Path,
    model: dict,
    strategy: str,
    global_batch: int,
    media: Path,
    max_steps: int = STEPS,
    ckpt_path: str | None = None,
    targets: str | None = None,
    validate: bool = False,
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Run `python -m msathinker fit` with the given strategy; returns the per-step train metrics (loss, and reward
    for GRPO) and the final adapter."""
    trainer = trainer_config(root, strategy)
    checkpoints = {"dirpath": str(root / "checkpoints"), "save_last": True, "save_top_k": 0,
                   "every_n_train_steps": 1, "enable_version_counter": False}  # fmt: skip
    trainer.update(
        max_steps=max_steps,
        limit_val_batches=1 if validate else 0,
        val_check_interval=max_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoints}],
    )
    data = data_config(media, max_clips=8, batch_size=global_batch // trainer["devices"], targets=targets)
    config = {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}
    args = ["--ckpt_path", ckpt_path] if ckpt_path is not None else []
    rows = [row for row in launch(root, config, "fit", *args) if row.get("train/loss")]
    metrics = {key: [float(row[key]) for row in rows] for key in ("train/loss", "train/reward") if key in rows[0]}
    return metrics, load_file(root / "adapter" / "adapter_model.safetensors")


def assert_same_run(run, reference, name: str) -> None:
    metrics, adapter = run
    reference_metrics, reference_adapter = reference
    assert metrics.keys() == reference_metrics.keys()
    for key, values in metrics.items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(reference_metrics[key]), rtol=RTOL, atol=ATOL,
                                   msg=lambda m, key=key: f"{name} {key}: {m}")  # fmt: skip
    assert adapter.keys() == reference_adapter.keys()
    for key, value in adapter.items():
        torch.testing.assert_close(value, reference_adapter[key], rtol=0, atol=WEIGHT_ATOL, msg=f"{name} {key}")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def grpo_runs(tiny_model, media, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grpo")
    return {s: fit(root / s, grpo_model(tiny_model), s, 2, media, validate=s == "fsdp2") for s in STRATEGIES}


def test_sft_ddp_and_fsdp2_match_one_process(tiny_model, media, tmp_path):
    model = sft_model(tiny_model)
    single = fit(tmp_path / "single", model, "single", 4, media, targets="rules")
    assert single[0]["train/loss"][-1] < single[0]["train/loss"][0]  # it learns
    assert_same_run(fit(tmp_path / "ddp", model, "ddp", 4, media, targets="rules"), single, "ddp")
    model["init_args"]["policy"]["gradient_checkpointing"] = True  # activation checkpointing under FSDP2
    assert_same_run(fit(tmp_path / "fsdp2", model, "fsdp2", 4, media, targets="rules"), single, "fsdp2")


def test_hint_grpo_ddp_and_fsdp2_match_one_process(grpo_runs):
    metrics, adapter = grpo_runs["single"]
    assert len(set(metrics["train/reward"])) > 1  # different completions every step
    assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # it learns
    assert_same_run(grpo_runs["ddp"], grpo_runs["single"], "ddp")
    assert_same_run(grpo_runs["fsdp2"], grpo_runs["single"], "fsdp2")


def test_fsdp2_resume_matches_an_uninterrupted_run(tiny_model, media, grpo_runs, tmp_path):
    model = grpo_model(tiny_model)
    first, _ = fit(tmp_path, model, "fsdp2", 2, media, max_steps=1)
    assert (tmp_path / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # a distributed checkpoint
    (tmp_path / "csv" / "version_0" / "metrics.csv").unlink()
    rest, adapter = fit(tmp_path, model, "fsdp2", 2, media, ckpt_path="last")
    assert len(first["train/loss"]) == 1 and len(rest["train/loss"]) == STEPS - 1
    joined = {key: first[key] + rest[key] for key in first}
    assert_same_run((joined, adapter), grpo_runs["fsdp2"], "fsdp2 resumed")


def test_distributed_evaluation_counts_each_clip_once(tiny_model, media, tmp_path):
    """`test` on a 5-clip split: on 2 processes the DistributedSampler gives each rank 3 clips, one clip twice;
    DDP and FSDP2 (where the padding must stay: generation is a collective) report the metrics of one process."""
    model = sft_model(tiny_model)
    model["init_args"]["generation"] = {"max_new_tokens": 4}
    metrics = {}
    for strategy in STRATEGIES:
        root = tmp_path / strategy
        config = {"trainer": trainer_config(root, strategy), "model": model, "data": data_config(media, max_clips=5)}
        (row,) = [row for row in launch(root, config, "test") if row.get("test/demo_mosi/MAE")]
        metrics[strategy] = {key: float(value) for key, value in row.items() if key.startswith("test/")}
    assert len(metrics["single"]) > 10
    assert metrics["ddp"] == metrics["single"]
    assert metrics["fsdp2"] == metrics["single"]


def test_qwen3_omni_sft_and_hint_grpo_under_fsdp2_match_one_process(media, tmp_path):
    """The Qwen3-Omni-MoE thinker (experts in every decoder layer, deepstack vision features) sharded with FSDP2 on
    2 processes trains as on one: SFT with activation checkpointing, and Hint-GRPO with encode-once rollouts."""
    from msathinker.assets import resolve_model_path

    qwen3 = resolve_model_path("tiny-qwen3")
    sft = sft_model(qwen3)
    single = fit(tmp_path / "sft-single", sft, "single", 4, media, targets="rules")
    assert single[0]["train/loss"][-1] < single[0]["train/loss"][0]
    sft["init_args"]["policy"]["gradient_checkpointing"] = True
    assert_same_run(fit(tmp_path / "sft-fsdp2", sft, "fsdp2", 4, media, targets="rules"), single, "qwen3 sft fsdp2")
    grpo = grpo_model(qwen3)
    single = fit(tmp_path / "grpo-single", grpo, "single", 2, media)
    assert all(v.abs().max() > 0 for k, v in single[1].items() if "lora_B" in k)
    assert_same_run(fit(tmp_path / "grpo-fsdp2", grpo, "fsdp2", 2, media), single, "qwen3 hint_grpo fsdp2")
