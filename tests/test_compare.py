"""Run comparison: the table of differing params and final metrics, the plot, the command and the notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tracking(tmp_path):
    """A small tracking DB: a parent run and three child runs that differ in two params."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("ablations")
    parent = client.create_run(experiment, tags={"mlflow.runName": "recipe"}).info.run_id
    for name, hint, lr, mae in (("hint_grpo", "prefix", "1e-4", 0.3), ("hint_prompt", "prompt", "1e-4", 0.35),
                                ("grpo_no_hint", "none", "5e-5", 0.4)):  # fmt: skip
        run = client.create_run(experiment, tags={"mlflow.runName": name, "mlflow.parentRunId": parent}).info.run_id
        for key, value in {"model.init_args.hint.placement": hint, "model.init_args.optimizer.init_args.lr": lr,
                           "trainer.max_steps": "60", "trainer.default_root_dir": f"runs/{name}"}.items():  # fmt: skip
            client.log_param(run, key, value)
        for step in range(5):
            client.log_metric(run, "train/reward", 1.0 + step * mae, step=step)
            client.log_metric(run, "train/hint_rate", 0.5 / (step + 1), step=step)
        client.log_metric(run, "test/demo_mosi/MAE", mae, step=5)
        client.log_metric(run, "test/demo_mosi/polarity_acc", 1 - mae, step=5)
        client.set_terminated(run)
    return uri


def test_table_keeps_only_differing_params_and_final_metrics(tracking, tmp_path):
    from msathinker.compare import comparison_table, load_runs, plot_comparison

    runs = load_runs("ablations", tracking)
    table = comparison_table(runs, ["test/", "train/reward"])
    children = table[table["parent"] == "recipe"].set_index("run")
    assert {"model.hint.placement", "model.optimizer.lr"} <= set(table.columns)
    assert "trainer.max_steps" not in table.columns and "trainer.default_root_dir" not in table.columns
    assert children.loc["hint_prompt", "test/demo_mosi/MAE"] == pytest.approx(0.35)
    assert children.loc["grpo_no_hint", "train/reward"] == pytest.approx(1.0 + 4 * 0.4)
    png = plot_comparison(runs, tracking, tmp_path / "plot.png")
    assert png.stat().st_size > 10_000


def test_compare_command(tracking, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    command = [sys.executable, "-m", "msathinker", "compare", "--experiment", "ablations", "--out",
               str(tmp_path / "c.png")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hint_prompt" in result.stdout and "model.hint.placement" in result.stdout
    assert (tmp_path / "c.png").is_file()
    command[command.index("ablations")] = "nope"
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode != 0 and "no experiment 'nope'" in result.stderr and "ablations" in result.stderr


def test_notebook_runs_headless(tracking, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MSATHINKER_COMPARE_EXPERIMENT", "ablations")
    notebook = nbformat.read(REPO / "notebooks/compare_runs.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not any(o.output_type == "error" for o in outputs)
    assert (tmp_path / "compare-ablations.png").is_file()
