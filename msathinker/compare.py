"""Comparing the runs of an MLflow experiment: the parameters that differ, the final metrics, and a plot.

Parameters equal across every run are dropped (they say nothing about the difference), and so are those that
name per-run paths (default_root_dir, dirpath, run_name, targets, adapter_path): they always differ.
"""

from __future__ import annotations

from pathlib import Path

PATH_PARAMS = ("default_root_dir", "dirpath", "run_name", "targets", "adapter_path", "tags")
CURVES = ("train/reward", "train/hint_rate", "train/frac_reward_zero_std", "train/loss")
BAR_METRICS = ("MAE", "Corr", "Non0_acc_2", "Mult_acc_2", "polarity_acc", "format_rate")


def load_runs(experiment: str, tracking_uri: str):
    """All runs of `experiment` as a DataFrame (mlflow.search_runs' columns: params.*, metrics.*, tags.*)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=[found.experiment_id])
    if runs.empty:
        raise ValueError(f"experiment {experiment!r} has no runs")
    return runs


def differing_params(runs) -> list[str]:
    """params.* columns whose values are not all equal, without the per-run path parameters. Runs with no
    parameters at all (e.g. a recipe's parent run) don't count."""
    columns = [c for c in runs.columns if c.startswith("params.") and c.rsplit(".", 1)[-1] not in PATH_PARAMS]
    with_params = runs[runs[columns].notna().any(axis=1)] if columns else runs
    return [c for c in columns if with_params[c].astype(str).nunique(dropna=False) > 1]


def comparison_table(runs, metric_patterns: list[str] | None = None):
    """One row per run: name, parent, status, the differing params and the final value of each metric."""
    metrics = [c for c in runs.columns if c.startswith("metrics.") and c != "metrics.epoch"]
    if metric_patterns:
        metrics = [c for c in metrics if any(p in c for p in metric_patterns)]
    names = dict(zip(runs["run_id"], runs.get("tags.mlflow.runName", runs["run_id"]), strict=True))
    table = runs[["run_id"]].copy()
    table.insert(0, "run", runs.get("tags.mlflow.runName", runs["run_id"]))
    parents = runs.get("tags.mlflow.parentRunId")
    table["parent"] = (
        parents.map(lambda p: names.get(p, "") if isinstance(p, str) else "") if parents is not None else ""
    )
    table["status"] = runs["status"]
    for column in differing_params(runs) + sorted(metrics):
        table[column.split(".", 1)[1].replace("init_args.", "")] = runs[column]
    return table.drop(columns=["run_id"]).reset_index(drop=True)


def plot_comparison(runs, tracking_uri: str, out: str | Path) -> Path:
    """Training curves (reward, hint rate, zero-std fraction, loss) and bars of the final test metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    curves = [m for m in CURVES if f"metrics.{m}" in runs.columns and runs[f"metrics.{m}"].notna().any()]
    bars = sorted(c for c in runs.columns if c.startswith("metrics.test/") and c.rsplit("/", 1)[-1] in BAR_METRICS)
    panels = len(curves) + (1 if bars else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5 * max(panels, 1), 4), squeeze=False)
    labels = runs.get("tags.mlflow.runName", runs["run_id"]).tolist()
    for ax, metric in zip(axes[0], curves, strict=False):
        for run_id, label in zip(runs["run_id"], labels, strict=True):
            history = client.get_metric_history(run_id, metric)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], label=label)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if bars:
        ax = axes[0][len(curves)]
        width = 0.8 / len(runs)
        for i, label in enumerate(labels):
            values = runs.iloc[i][bars].astype(float).fillna(0.0).tolist()
            ax.bar([x + i * width for x in range(len(bars))], values, width=width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(bars))])
        ax.set_xticklabels([b.removeprefix("metrics.test/") for b in bars], rotation=45, ha="right", fontsize=7)
        ax.set_title("final test metrics")
        ax.legend(fontsize=7)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no curves or test metrics logged", ha="center")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
