"""Run comparison: the table of differing params and final metrics, the plot, the command and the notebook, on a
small tracking DB written with the MLflow client."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "ablations"
DIFFERING = [
    "model.init_args.hint.init_args.num_unhinted",  # only the mix run has it
    "model.init_args.hint.init_args.use",
    "model.init_args.optimizer.init_args.lr",
    "model.init_args.policy.adapter_path",
]
LONG_PATH = "runs/quickstart-recipe-with-a-long-name/sft/adapter"  # wider than a text-view column
METRICS = [  # test/, val/, train/, the rest; no epoch
    "test/demo_mosi/MAE",
    "test/demo_mosi/Non0_acc_2",
    "test/demo_mosi/format_rate",
    "test/demo_mosi/polarity_acc",
    "val/demo_mosi/MAE",
    "train/hint_rate",
    "train/loss",
    "train/reward",
    "hint_grpo/test/demo_mosi/MAE",
]

HINT_RUNS = (("hint_replace", "replace", "5e-05", 1.0, LONG_PATH),
             ("hint_mix", "mix", "1e-4", 2.0, "runs/sft/adapter"))  # name, use, lr, reward, adapter  # fmt: skip


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """Three runs of one experiment: a recipe-like parent without params, and two Hint-GRPO runs (one nested under
    the parent) that differ in the hint use, the learning rate and the adapter they start from, share max_steps and
    seed, and have their own default_root_dir and trainer.callbacks/0/init_args/dirpath. An empty second
    experiment is there too."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT)
    client.create_experiment("empty")
    now = int(time.time() * 1000)
    parent = client.create_run(experiment, run_name="recipe", start_time=now).info.run_id
    client.log_metric(parent, "hint_grpo/test/demo_mosi/MAE", 0.4)
    for k, (name, use, lr, reward, adapter) in enumerate(HINT_RUNS):
        tags = {"mlflow.parentRunId": parent} if name == "hint_replace" else {}
        run = client.create_run(experiment, run_name=name, tags=tags, start_time=now + 1 + k).info.run_id
        params = {
            "model.class_path": "msathinker.HintGRPOModule",
            "model.init_args.hint.init_args.use": use,
            "model.init_args.optimizer.init_args.lr": lr,
            "model.init_args.policy.adapter_path": adapter,
            "trainer.max_steps": "5",
            "seed_everything": "0",
            "trainer.default_root_dir": f"runs/{name}",
            "trainer.callbacks/0/init_args/dirpath": f"runs/{name}/checkpoints",
            **({"model.init_args.hint.init_args.num_unhinted": "2"} if use == "mix" else {}),
        }
        metrics = [
            *(Metric("train/reward", reward + 0.1 * step, now, step) for step in range(5)),
            *(Metric("train/hint_rate", 0.5 / (step + 1), now, step) for step in range(5)),
            *(Metric("train/loss", 1.0 / (step + 1), now, step) for step in range(5)),
            *(Metric("epoch", 0.0, now, step) for step in range(5)),
            Metric("val/demo_mosi/MAE", 0.9 - k, now, 2),
            Metric("val/demo_mosi/MAE", 0.6 - k / 10, now, 4),
            *(Metric(f"test/demo_mosi/{m}", v - k / 10, now, 5) for m, v in (("MAE", 0.5), ("polarity_acc", 0.9),
                                                                              ("format_rate", 1.0))),
        ]  # fmt: skip
        if name == "hint_replace":
            metrics.append(Metric("test/demo_mosi/Non0_acc_2", 0.8, now, 5))
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run)
    client.set_terminated(parent)
    return uri


def env(**extra: str) -> dict[str, str]:
    """The test process's environment (conftest's MPLCONFIGDIR, MLFLOW_DISABLE_TELEMETRY) plus `extra`; this
    checkout's package first on the path (the commands run in a temporary directory)."""
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO), **extra}


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msathinker", "compare", *args], capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=120)  # fmt: skip


def test_table_has_exactly_the_differing_params_and_the_final_metrics(tracking):
    from msathinker.compare import comparison_table, differing_params, load_runs

    runs = load_runs(EXPERIMENT, tracking)
    assert runs["run"].tolist() == ["recipe", "hint_replace", "hint_mix"]  # oldest first
    assert differing_params(runs) == DIFFERING
    table = comparison_table(runs)
    assert table.columns.tolist() == ["run", "id", "parent", "status", *DIFFERING, *METRICS]
    rows = table.set_index("run")
    assert rows.loc["hint_replace", "parent"] == "recipe" and rows.loc["hint_mix", "parent"] == ""
    assert rows.loc["hint_mix", "model.init_args.hint.init_args.use"] == "mix"
    assert pd.isna(rows.loc["hint_replace", "model.init_args.hint.init_args.num_unhinted"])
    assert rows.loc["hint_mix", "train/reward"] == pytest.approx(2.4)  # the value at the last step
    assert rows.loc["hint_replace", "train/hint_rate"] == pytest.approx(0.1)
    assert rows.loc["hint_mix", "val/demo_mosi/MAE"] == pytest.approx(0.5)  # the last validation
    assert rows.loc["hint_replace", "test/demo_mosi/MAE"] == pytest.approx(0.5)
    assert pd.isna(rows.loc["hint_mix", "test/demo_mosi/Non0_acc_2"])
    assert rows.loc["recipe", "hint_grpo/test/demo_mosi/MAE"] == pytest.approx(0.4)
    assert set(rows["status"]) == {"FINISHED"}


def test_metric_globs_and_run_name_filter(tracking):
    from msathinker.compare import comparison_table, load_runs

    runs = load_runs(EXPERIMENT, tracking, run_name_contains="hint_")
    assert runs["run"].tolist() == ["hint_replace", "hint_mix"]
    table = comparison_table(runs, ["test/*/MAE", "train/reward"])
    # the parent is filtered out but still named; lr and use still differ between the two
    assert table.columns.tolist() == ["run", "id", "parent", "status", *DIFFERING, "test/demo_mosi/MAE", "train/reward"]
    assert table["parent"].tolist() == ["recipe", ""]
    with pytest.raises(ValueError, match=r"no run of 'ablations' has 'sft'.*hint_mix"):
        load_runs(EXPERIMENT, tracking, run_name_contains="sft")


def test_errors_name_what_exists(tracking, tmp_path):
    from msathinker.compare import load_runs

    with pytest.raises(ValueError, match=r"no experiment 'nope'.*\['Default', 'ablations', 'empty'\]"):
        load_runs("nope", tracking)
    with pytest.raises(ValueError, match=r"experiment 'empty' .* has no runs"):
        load_runs("empty", tracking)
    with pytest.raises(ValueError, match="no tracking database"):
        load_runs(EXPERIMENT, f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()  # MLflow would have created an empty one


def test_plot_is_written_and_skips_what_no_run_has(tracking, tmp_path):
    from msathinker.compare import load_runs, plot_comparison

    png = plot_comparison(load_runs(EXPERIMENT, tracking), tracking, tmp_path / "sub" / "plot.png")
    assert png == tmp_path / "sub" / "plot.png" and png.stat().st_size > 20_000
    # 100 dpi: reward, hint rate and loss panels of 450 x 380 (no run has train/frac_reward_zero_std), bars below
    assert png_size(png) == (3 * 450, 2 * 380)
    # the parent alone has no curve and no test/ metric: the PNG is still written, one panel with a note
    nothing = plot_comparison(load_runs(EXPERIMENT, tracking, "recipe"), tracking, tmp_path / "nothing.png")
    assert png_size(nothing) == (450, 380)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_compare_command(tracking, tmp_path):
    result = compare("--experiment", EXPERIMENT, "--tracking_uri", tracking, "--out", str(tmp_path / "c.png"),
                     "--metrics+", "test/*", "--metrics+", "train/reward", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 runs; 4 of 9 params differ" in result.stdout
    for text in ("hint_replace", "hint_mix", "recipe", *DIFFERING, "test/demo_mosi/MAE", "train/reward"):
        assert text in result.stdout
    assert "train/loss" not in result.stdout and "default_root_dir" not in result.stdout
    assert (tmp_path / "c.png").stat().st_size > 0
    result = compare("--experiment", EXPERIMENT, "--tracking_uri", tracking, "--run_name_contains", "mix",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hint_mix" in result.stdout and "hint_replace" not in result.stdout
    assert (tmp_path / f"compare-{EXPERIMENT}.png").stat().st_size > 0  # the default --out


def test_compare_command_errors(tracking, tmp_path):
    result = compare("--experiment", "nope", "--tracking_uri", tracking, cwd=tmp_path)
    assert result.returncode != 0
    assert "no experiment 'nope'" in result.stderr and "'ablations', 'empty'" in result.stderr
    result = compare("--experiment", "empty", "--tracking_uri", tracking, cwd=tmp_path)
    assert result.returncode != 0 and "has no runs" in result.stderr
    result = compare("--tracking_uri", tracking, cwd=tmp_path)
    assert result.returncode != 0 and "give --experiment" in result.stderr and "ablations" in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_help_stays_light():
    """`python -m msathinker --help` must not import MLflow or matplotlib (the compare command imports them late)."""
    probe = "import sys, msathinker.__main__ as m; m.main(['--help']); print(sorted({'mlflow', 'matplotlib', 'pandas'} & set(sys.modules)))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env(), cwd=REPO)
    assert "compare" in result.stdout and result.stdout.strip().endswith("[]"), result.stdout + result.stderr


def test_notebook_runs_headless(tracking, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # the kernel inherits this process's environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MSATHINKER_COMPARE_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    notebook = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "\n".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert "hint_mix" in shown and "model.init_args.hint.init_args.use" in shown
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot, inline
    found = notebook.cells[-1].outputs[0]["data"]["text/plain"]  # the search_runs filter with backticks
    assert "hint_mix" in found and "hint_replace" not in found
    assert (tmp_path / f"compare-{EXPERIMENT}.png").is_file()


def test_text_view_puts_runs_in_columns_and_wraps_long_values(tracking):
    from msathinker.compare import load_runs, text_table

    lines = text_table(load_runs(EXPERIMENT, tracking)).splitlines()
    assert max(map(len, lines)) <= 120
    header = lines[0].split("│")
    assert [cell.strip() for cell in header] == ["run", "recipe", "hint_replace", "hint_mix"]
    rows = {line.split("│")[0].strip(): [c.strip() for c in line.split("│")[1:]] for line in lines[2:] if "│" in line}
    assert rows["status"] == ["FINISHED"] * 3 and rows["parent"] == ["", "recipe", ""]
    assert rows["model.init_args.hint.init_args.use"] == ["-", "replace", "mix"]
    assert rows["test/demo_mosi/MAE"] == ["-", "0.5", "0.4"] and rows["train/reward"] == ["-", "1.4", "2.4"]
    assert list(rows).index("model.init_args.policy.adapter_path") < list(rows).index("test/demo_mosi/MAE")
    # the path wider than a column goes on in the same column on the next line
    at = next(i for i, line in enumerate(lines) if line.startswith("model.init_args.policy.adapter_path"))
    column = lines[at].index(LONG_PATH[:32])
    assert lines[at + 1][column:].split("│")[0].strip() == LONG_PATH[32:]


@pytest.mark.parametrize("width", [40, 60, 80, 100, 120])
def test_text_view_fits_the_width_in_blocks_of_runs(tracking, width):
    """At 100 columns the runs stay side by side in narrower columns (the long path wraps in more pieces); below
    that they go to blocks."""
    from msathinker.compare import load_runs, text_table

    text = text_table(load_runs(EXPERIMENT, tracking), width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    headers = [line for line in lines if line.startswith("run ")]
    names = [cell.strip() for header in headers for cell in header.split("│")[1:]]
    assert names == ["recipe", "hint_replace", "hint_mix"]  # every run once, in order, over the blocks
    assert (len(headers) > 1) == (width < 100)
    assert sum(line.startswith("test/demo_mosi/MAE ") for line in lines) == len(headers)  # the names in each block


def test_param_globs_keep_the_differing_params_they_match(tracking):
    """For a paper: the runs, the one param that matters and a few metrics. The globs pick among the differing
    params; a param equal in every run stays out even when it matches."""
    from msathinker.compare import comparison_table, differing_params, load_runs, markdown_table

    runs = load_runs(EXPERIMENT, tracking)
    assert differing_params(runs, ["*.use", "trainer.*"]) == ["model.init_args.hint.init_args.use"]
    table = comparison_table(runs, ["test/*/MAE"], ["*.use", "*.lr"])
    assert table.columns.tolist() == ["run", "id", "parent", "status", "model.init_args.hint.init_args.use",
                                      "model.init_args.optimizer.init_args.lr", "test/demo_mosi/MAE"]  # fmt: skip
    assert markdown_table(runs, ["test/*/MAE"], ["*.use"]).splitlines()[4].endswith("| FINISHED | mix | 0.4 |")


def test_markdown_csv_and_json(tracking):
    import io
    import json

    from msathinker.compare import csv_table, json_records, load_runs, markdown_table

    runs = load_runs(EXPERIMENT, tracking)
    markdown = markdown_table(runs, ["test/*/MAE"]).splitlines()
    assert markdown[0] == f"| run | id | parent | status | {' | '.join(DIFFERING)} | test/demo_mosi/MAE |"
    assert markdown[1] == "| --- " * 9 + "|" and len(markdown) == 5
    assert markdown[4].startswith(f"| hint_mix | {runs['run_id'][2][:8]} |  | FINISHED | 2 | mix | 1e-4 |")
    assert markdown[4].endswith("| 0.4 |") and markdown[2].endswith("| - | - | - | - | - |")

    table = pd.read_csv(io.StringIO(csv_table(runs)), dtype={"model.init_args.optimizer.init_args.lr": str})
    assert table.columns.tolist() == ["run", "run_id", "parent", "status", *DIFFERING, *METRICS]
    assert table["run_id"].tolist() == runs["run_id"].tolist()  # the full ids
    assert table["model.init_args.optimizer.init_args.lr"].tolist()[1:] == ["5e-05", "1e-4"]
    assert table["train/reward"].tolist()[1:] == pytest.approx([1.4, 2.4])  # full precision
    assert pd.isna(table["parent"][0]) and pd.isna(table["train/reward"][0])  # empty cells

    records = json.loads(json_records(runs))
    assert [r["run"] for r in records] == ["recipe", "hint_replace", "hint_mix"]
    mix = records[2]
    assert mix["run_id"] == runs["run_id"][2] and mix["status"] == "FINISHED" and mix["parent"] == ""
    assert mix["params"] == dict(zip(DIFFERING, ["2", "mix", "1e-4", "runs/sft/adapter"], strict=True))
    assert "model.init_args.hint.init_args.num_unhinted" not in records[1]["params"]  # not logged: absent
    assert mix["metrics"]["train/reward"] == pytest.approx(2.4) and "epoch" not in mix["metrics"]
    assert records[0]["params"] == {} and records[0]["metrics"] == {"hint_grpo/test/demo_mosi/MAE": 0.4}
    assert pd.Timestamp(mix["start_time"]).tzname() == "UTC"


def test_compare_command_formats(tracking, tmp_path, capsys):
    """With --format markdown/csv/json stdout holds the table alone, the summary and the plot's path go to stderr."""
    import io
    import json

    from msathinker.compare import main

    def run(format: str, width: int | None = None) -> tuple[str, str]:
        main(EXPERIMENT, tracking, str(tmp_path / "c.png"), None, None, format, width)
        return capsys.readouterr()

    out, err = run("csv")
    assert len(pd.read_csv(io.StringIO(out))) == 3
    assert "3 runs; 4 of 9 params differ" in err and f"plot: {tmp_path / 'c.png'}" in err
    assert len(json.loads(run("json")[0])) == 3
    assert run("markdown")[0].startswith("| run | id | parent | status |")
    out, err = run("text", 60)
    assert out.startswith(f"experiment {EXPERIMENT!r}") and "plot: " in out and not err
    assert max(map(len, out.splitlines()[1:-1])) <= 60
    with pytest.raises(SystemExit, match="--width 30 is too narrow for the table; give at least 40"):
        run("text", 30)
    with pytest.raises(SystemExit, match="unknown --format 'html'; choose one of text, markdown, csv, json"):
        run("html")
    result = compare("--experiment", EXPERIMENT, "--tracking_uri", tracking, "--format", "html", cwd=tmp_path)
    assert result.returncode != 0 and "markdown" in result.stderr and "json" in result.stderr


def test_params_are_logged_as_plain_values():
    """The config values SaveConfigToRun logs: a path as the path, lists and tuples as JSON, callbacks numbered."""
    from jsonargparse.typing import path_type

    from msathinker.cli import _flatten

    config = {"config": [path_type("fr")(str(REPO / "experiments/quickstart/sft.yaml"), cwd=REPO)],
              "data": {"init_args": {"modalities": ["text", "audio"], "data_root": None}},
              "model": {"init_args": {"optimizer": {"init_args": {"betas": (0.9, 0.999)}}}},
              "trainer": {"callbacks": [{"class_path": "X", "init_args": {"dirpath": "runs/x", "n": 1}}]}}  # fmt: skip
    assert _flatten(config) == {
        "config": f'["{REPO}/experiments/quickstart/sft.yaml"]',
        "data.init_args.modalities": '["text", "audio"]',
        "data.init_args.data_root": None,
        "model.init_args.optimizer.init_args.betas": "[0.9, 0.999]",
        "trainer.callbacks/0/class_path": "X",
        "trainer.callbacks/0/init_args/dirpath": "runs/x",
        "trainer.callbacks/0/init_args/n": 1,
    }


def test_runs_logged_with_path_reprs_show_the_path(tmp_path):
    """Runs logged before the params were plain hold jsonargparse's repr; compare shows the path."""
    from mlflow import MlflowClient

    from msathinker.compare import differing_params, load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("old")
    for name, cwd in (("sft", "/work/a"), ("grpo", "/work/b")):
        run = client.create_run(experiment, run_name=name).info.run_id
        client.log_param(run, "config", f"[Path_fsr(experiments/quickstart/{name}.yaml, cwd={cwd})]")
        client.log_param(run, "data.root", f"Path_drw(/data/{name}, cwd={cwd})")
    runs = load_runs("old", uri)
    assert runs["params.config"].tolist() == ["[experiments/quickstart/sft.yaml]", "[experiments/quickstart/grpo.yaml]"]
    assert runs["params.data.root"].tolist() == ["/data/sft", "/data/grpo"] and differing_params(runs) == [
        "config", "data.root"]  # fmt: skip
