"""The full method in one command: teacher synthesis -> SFT -> Hint-GRPO -> test, as nested MLflow runs.

Each stage is the same LightningCLI config a user would run alone (`fit --config X.yaml`); the recipe chains their
outputs (synthesis JSONL -> SFT targets, SFT adapter -> GRPO policy.adapter_path), puts every stage's files under
one output directory, tests each trained model in-domain (and on any cross-domain datasets), and ends with a
table of the final metrics per stage, logged to the parent run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY_METRICS = ("MAE", "Corr", "Non0_acc_2", "Mult_acc_2", "Mult_acc_7", "polarity_acc", "format_rate")


def _stage_cli(config: str, args: list[str]):
    from msathinker.cli import MSACLI, cli_kwargs

    return MSACLI(**cli_kwargs(), run=False, args=["--config", config, *args])


def _test(cli, cross_domain: list[str]) -> dict[str, float]:
    """Test the trained model in-domain and on each cross-domain dataset (answers mapped to that range)."""
    import lightning as L

    from msathinker.scales import scale_of

    results = dict(cli.trainer.test(cli.model, datamodule=cli.datamodule)[0])
    own_scale = cli.datamodule.scale.name
    for entry in cross_domain:  # "demo_sims" or "mosi=/data/MOSI"
        dataset, _, root = entry.partition("=")
        hparams = {k: v for k, v in cli.datamodule.hparams.items() if not k.startswith("_")}
        mapped = scale_of(dataset).name != own_scale
        hparams.update(dataset=dataset, data_root=root or None, prompt_scale=own_scale if mapped else None)
        cli.model.prediction_scale = own_scale if mapped else None
        # a logger-free trainer: the stage run's params describe its own data; the metrics are logged below
        tester = L.Trainer(
            accelerator=cli.trainer.accelerator, devices=1, precision=cli.trainer.precision, logger=False,
            enable_checkpointing=False, limit_test_batches=cli.trainer.limit_test_batches, enable_progress_bar=False,
        )  # fmt: skip
        data = type(cli.datamodule)(**hparams)  # the stage's own DataModule class (e.g. the demo's)
        metrics = tester.test(cli.model, datamodule=data)[0]
        if cli.trainer.logger is not None:
            cli.trainer.logger.log_metrics(metrics, step=cli.trainer.global_step)
        results.update(metrics)
    cli.model.prediction_scale = None
    return {k: float(v) for k, v in results.items()}


def run_recipe(
    experiment: str,
    output_dir: str,
    synthesize: str | None,
    sft: str,
    grpo: str | None,
    sft_args: list[str],
    grpo_args: list[str],
    cross_domain: list[str],
    synthesize_args: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Run the stages (see the module docstring); returns {stage: {metric: value}}."""
    import mlflow

    from msathinker.tracking import default_tracking_uri

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_experiment(experiment)
    results: dict[str, dict[str, float]] = {}
    with mlflow.start_run(run_name="recipe") as parent:
        nest = json.dumps({"mlflow.parentRunId": parent.info.run_id})
        logger_args = [
            "--trainer.logger.init_args.experiment_name",
            experiment,
            "--trainer.logger.init_args.tags",
            nest,
        ]
        targets_args: list[str] = []
        if synthesize is not None:
            from jsonargparse import CLI

            from msathinker.synthesis import run_synthesis

            records = out / "synthesis" / "records.jsonl"
            args = ["--config", synthesize, *(synthesize_args or []), "--output", str(records),
                    "--experiment", experiment, "--parent_run_id", parent.info.run_id]  # fmt: skip
            summary = CLI(run_synthesis, args=args)
            results["synthesis"] = {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
            targets_args = ["--data.init_args.targets", str(records)]
        stage_dir = out / "sft"
        cli = _stage_cli(
            sft,
            [*logger_args, "--trainer.logger.init_args.run_name", "sft", "--trainer.default_root_dir", str(stage_dir),
             *targets_args, *sft_args],
        )  # fmt: skip
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        results["sft"] = _test(cli, cross_domain)
        adapter = stage_dir / "adapter"
        if grpo is not None:
            stage_dir = out / "hint_grpo"
            cli = _stage_cli(
                grpo,
                [*logger_args, "--trainer.logger.init_args.run_name", "hint_grpo", "--trainer.default_root_dir",
                 str(stage_dir), "--model.init_args.policy.adapter_path", str(adapter), *grpo_args],
            )  # fmt: skip
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            results["hint_grpo"] = _test(cli, cross_domain)
        table = summary_table(results)
        print(table)
        (out / "summary.txt").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps(results, indent=2))
        mlflow.log_artifact(str(out / "summary.txt"))
        mlflow.log_metrics(
            {f"{stage}/{k}": v for stage, metrics in results.items() for k, v in metrics.items() if _finite(v)}
        )
    return results


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


def summary_table(results: dict[str, dict[str, float]]) -> str:
    """Stages as rows, the key test metrics of every tested dataset as columns (per-slice metrics are left out)."""
    columns = sorted(
        {
            k
            for stage in results.values()
            for k in stage
            if k.startswith("test/") and k.count("/") == 2 and k.rsplit("/", 1)[-1] in KEY_METRICS  # no slices
        }
    )
    rows = [["stage", *(c.removeprefix("test/") for c in columns)]]
    for stage, metrics in results.items():
        if any(c in metrics for c in columns):
            rows.append([stage, *(f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
