"""Does hint credit teach the hard samples? Plain GRPO against three Hint-GRPO credits on demo_mosi (issue 14).

From one SFT adapter (the quickstart's: `python -m msathinker recipe --config experiments/quickstart/recipe.yaml
--grpo null`), each variant runs the quickstart's Hint-GRPO stage with the same steps and seeds, then tests on the
demo_mosi test split. The table gives the sarcastic slice's polarity_acc (the clips the SFT student never saw,
the hard samples), the overall polarity_acc and MAE, per seed and their mean:

    python benchmarks/hint_credit_demo.py --sft-adapter runs/quickstart-recipe/sft/adapter --seeds 0 1

Variants: sft (the adapter, tested as is), plain_grpo (NoHint), hint_prompt (the quickstart: prefix hint, use mix,
credit prompt), hint_policy (credit policy), hint_policy_span (credit policy + DC span credit); on request
hint_policy_gamma0.01 (credit policy with shaping_gamma 0.01). Each run is a subprocess with its own MLflow run
(experiment hint_credit_demo); `--jobs` run at once, sharing the cores. CLI overrides for every run go after `--`
(e.g. `-- --trainer.max_steps 180` for three epochs of the 240 train clips).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = "experiments/quickstart/hint_grpo.yaml"
VARIANTS: dict[str, list[str]] = {
    "sft": ["--config", "experiments/ablations/grpo_no_hint.yaml"],  # tested without training
    "plain_grpo": ["--config", "experiments/ablations/grpo_no_hint.yaml"],
    "hint_prompt": [],
    "hint_policy": ["--config", "experiments/ablations/hint_credit_policy.yaml"],
    "hint_policy_span": [
        "--config",
        "experiments/ablations/hint_credit_policy.yaml",
        "--config",
        "experiments/ablations/span_credit.yaml",
    ],
    "hint_policy_gamma0.01": [
        "--config",
        "experiments/ablations/hint_credit_policy.yaml",
        "--model.init_args.hint.init_args.shaping_gamma",
        "0.01",
    ],
}
DEFAULT_VARIANTS = ["sft", "plain_grpo", "hint_prompt", "hint_policy", "hint_policy_span"]
COLUMNS = {
    "sarcastic polarity_acc": "test/demo_mosi/sarcastic/polarity_acc",
    "polarity_acc": "test/demo_mosi/polarity_acc",
    "MAE": "test/demo_mosi/MAE",
}


def run_one(variant: str, seed: int, sft_adapter: str, out: Path, extra: list[str]) -> dict[str, float]:
    """Fit (except "sft") and test one variant in this process; returns the test metrics."""
    from msathinker.recipe import _stage_cli, _test

    root = out / f"{variant}-seed{seed}"
    args = [
        *VARIANTS[variant],
        *extra,
        "--seed_everything", str(seed), "--model.init_args.seed", str(seed),
        "--model.init_args.policy.adapter_path", sft_adapter,
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.experiment_name", "hint_credit_demo",
        "--trainer.logger.init_args.run_name", f"{variant}-seed{seed}",
    ]  # fmt: skip
    cli = _stage_cli(BASE, args)
    if variant != "sft":
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    results = _test(cli, [])
    root.mkdir(parents=True, exist_ok=True)
    (root / "result.json").write_text(json.dumps(results, indent=2))
    return results


def table(results: dict[tuple[str, int], dict[str, float]], seeds: list[int]) -> str:
    header = ["variant", *(f"{name} (seed {s})" for name in COLUMNS for s in seeds), *(f"{n} (mean)" for n in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for variant in VARIANTS:
        runs = [results.get((variant, s if variant != "sft" else seeds[0])) for s in seeds]  # greedy: one sft test
        if not all(runs):
            continue
        cells = [f"{run[key]:.3f}" for key in COLUMNS.values() for run in runs]
        cells += [f"{sum(run[key] for run in runs) / len(runs):.3f}" for key in COLUMNS.values()]
        lines.append("| " + " | ".join([variant, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-adapter", required=True, help="the SFT stage's adapter directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument(
        "--out", default="runs/hint-credit-demo", help="one directory per run, and table.txt (Markdown)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="CLI overrides for every run, after --, e.g. --trainer.max_steps 120")
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.sft_adapter, out, args.extra)
        return
    if not (Path(args.sft_adapter) / "adapter_config.json").is_file():
        sys.exit(f"{args.sft_adapter}: no adapter_config.json; run the quickstart's SFT stage first (see --help)")
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def launch(job: tuple[str, int]) -> tuple[tuple[str, int], dict[str, float] | None]:
        variant, seed = job
        command = [sys.executable, __file__, "--sft-adapter", args.sft_adapter, "--out", str(out),
                   "--one", variant, str(seed), "--", *args.extra]  # fmt: skip
        log = out / f"{variant}-seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=environment).returncode
        result = out / f"{variant}-seed{seed}" / "result.json"
        print(f"{variant} seed {seed}: {'done' if code == 0 else f'failed ({code}), see {log}'}", flush=True)
        return job, json.loads(result.read_text()) if code == 0 else None

    jobs = [(v, s) for v in args.variants for s in (args.seeds[:1] if v == "sft" else args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = {job: r for job, r in pool.map(launch, jobs) if r is not None}
    text = table(results, args.seeds)
    (out / "table.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
