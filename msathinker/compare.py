"""Comparing the runs of one MLflow experiment: the parameters that differ, the final metrics, and a plot.

Every run logs its whole resolved config (about 200 dotted parameters), so a side-by-side view is only readable
once it is cut down to what tells the runs apart. The rules:

- Parameters: a parameter is shown when its value is not the same in every run that logged anything in its
  section (the first part of its name: trainer, model, data, ...). A missing value counts as a value (an SFT run
  has no model.init_args.hint.* options, a Hint-GRPO run has), but a run with nothing in the section is not
  compared on it: a recipe's parent run (no parameters) or its synthesis run (only `teacher`) would otherwise
  make every parameter "differ". Parameters that only name a run or say where it writes (the last part of the
  name, after "." or "/", in `OUTPUT_PARAMS`: default_root_dir, dirpath, run_name, ...; Lightning flattens lists
  with "/", as in trainer.callbacks/0/init_args/dirpath) are never shown: they differ between almost any two runs
  and cannot explain a difference in their metrics. Inputs that are paths (model_path, adapter_path, targets,
  data_root, ckpt_path, config) stay: they are part of what was compared.
- Metrics: the final value of each, i.e. MLflow's latest value (the one at the highest step; same step: the
  latest logged): the end of a train/* curve, the last validation, the test result. `epoch` (Lightning's
  bookkeeping) is left out.

Names keep their full dotted/slashed form, so a row can be pasted into a `--key value` override or an MLflow
filter string.

Output formats (`--format`):
- text (default): runs in columns, one row per differing param, then one per metric, in blocks of runs that fit
  the terminal (`--width`; 120 characters when stdout is not a terminal); long values wrap inside their cell.
- markdown: one row per run (for a paper or a README), the same columns as `comparison_table`.
- csv: one row per run, the same columns with the full run id (for scripts; missing values are empty).
- json: a list with one object per run: run, run_id, parent, status, start_time, params (the differing ones) and
  metrics (final values); a param or metric the run did not log is absent.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

OUTPUT_PARAMS = frozenset(
    {"default_root_dir", "dirpath", "save_dir", "run_name", "run_id", "tracking_uri", "tags", "media_cache_dir"}
)
CURVES = ("train/reward", "train/hint_rate", "train/frac_reward_zero_std", "train/loss")
BAR_METRICS = ("MAE", "Corr", "Non0_acc_2", "Mult_acc_2", "polarity_acc", "format_rate")
METRIC_ORDER = ("test/", "val/", "train/")
FORMATS = ("text", "markdown", "csv", "json")
LABEL_WIDTH = 50
"""Widest row label (param or metric name) of the text view; a longer one wraps."""
VALUE_WIDTH = 32
"""Widest run column of the text view; a longer value (a path) wraps inside its cell."""
VALUE_MIN_WIDTH = 12
"""The narrowest run column: the text view narrows its columns down to this to show all runs side by side, and a
long label leaves at least this much (the label wraps first)."""
MIN_WIDTH = 40
"""The narrowest text view: a label and one run column."""
LEGACY_PATH = re.compile(r"Path_\w+\((.*?), cwd=[^)]*\)")
"""A jsonargparse path as runs logged before the config params were made plain show it: Path_fsr(<path>, cwd=...)."""


def _client(tracking_uri: str) -> MlflowClient:
    """An MLflow client, refusing a SQLite URI whose file does not exist: MLflow would silently create an empty
    database there, and the user would see "no experiment" instead of "wrong place"."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise ValueError(
                f"no tracking database {path} (tracking URI {tracking_uri}); give --tracking_uri or set "
                "MLFLOW_TRACKING_URI"
            )
    return MlflowClient(tracking_uri)


def experiment_names(tracking_uri: str) -> list[str]:
    """Names of the active experiments at `tracking_uri` (for the error messages)."""
    return sorted(e.name for e in _client(tracking_uri).search_experiments())


def load_runs(experiment: str, tracking_uri: str, run_name_contains: str | None = None) -> pd.DataFrame:
    """The experiment's runs, oldest first: one row per run with the columns run_id, run (name), parent (the
    parent run's name, "" for a top-level run), status, start_time, params.<name> and metrics.<name> (the final
    value). Nested runs are included; parents are resolved over the whole experiment, so a child keeps its parent's
    name when `run_name_contains` (a substring of the run name) filters the parent out. Only the params and metrics
    of the runs kept are columns.

    Raises ValueError naming the existing experiments when there is no such experiment, and when it has no runs
    (or none whose name contains `run_name_contains`).
    """
    import pandas as pd

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        raise ValueError(
            f"no experiment {experiment!r} at {tracking_uri}; experiments there: {experiment_names(tracking_uri)}"
        )
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    if not runs:
        raise ValueError(f"experiment {experiment!r} at {tracking_uri} has no runs")
    names = {run.info.run_id: run.info.run_name for run in runs}
    frame = pd.DataFrame(
        [
            {
                "run_id": run.info.run_id,
                "run": run.info.run_name,
                "parent": names.get(parent, parent) if (parent := run.data.tags.get("mlflow.parentRunId")) else "",
                "status": run.info.status,
                "start_time": pd.Timestamp(run.info.start_time, unit="ms"),
                **{f"params.{k}": LEGACY_PATH.sub(r"\1", v) for k, v in run.data.params.items()},
                **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
            }
            for run in runs
        ]
    )
    if run_name_contains is not None:
        frame = frame[frame["run"].str.contains(run_name_contains, regex=False)].reset_index(drop=True)
        if frame.empty:
            raise ValueError(
                f"no run of {experiment!r} has {run_name_contains!r} in its name; names: {sorted(set(names.values()))}"
            )
    return frame.dropna(axis=1, how="all")  # the params and metrics of runs filtered out


def _matching(name: str, patterns: list[str] | None) -> bool:
    """Whether `name` matches one of the shell-style globs (any name, without globs)."""
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def differing_params(runs: pd.DataFrame, patterns: list[str] | None = None) -> list[str]:
    """Names (sorted, without "params.") of the parameters that differ between the runs; see the module docstring
    for the rule. `patterns`: only those matching one of these shell-style globs (e.g. `model.init_args.hint.*`)."""
    columns = sorted(c for c in runs.columns if c.startswith("params."))
    sections = [re.split(r"[./]", c.removeprefix("params."))[0] for c in columns]
    logged = runs[columns].notna().T.groupby(sections).any().T  # runs x section: logged anything in it
    return [
        c.removeprefix("params.")
        for c, section in zip(columns, sections, strict=True)
        if re.split(r"[./]", c)[-1] not in OUTPUT_PARAMS
        and _matching(c.removeprefix("params."), patterns)
        and runs.loc[logged[section], c].nunique(dropna=False) > 1
    ]


def _metric_key(name: str) -> tuple[int, str]:
    """test/ first, then val/, train/, the rest; alphabetical inside each group."""
    group = next((i for i, prefix in enumerate(METRIC_ORDER) if name.startswith(prefix)), len(METRIC_ORDER))
    return group, name


def final_metrics(runs: pd.DataFrame, patterns: list[str] | None = None) -> pd.DataFrame:
    """The final value of each metric (columns named without "metrics.", NaN where a run did not log it), one row
    per run. `patterns` are shell-style globs matched against the whole name (`test/*`, `*/MAE`,
    `train/reward`); by default every metric but `epoch`."""
    names = [c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")]
    names = [n for n in names if n != "epoch" and _matching(n, patterns)]
    names.sort(key=_metric_key)
    return runs[[f"metrics.{n}" for n in names]].set_axis(names, axis=1)


def _table_parts(
    runs: pd.DataFrame, metric_patterns: list[str] | None, param_patterns: list[str] | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three column groups of the comparison table: run, id, parent (only when some run is nested), status;
    the differing params; the final metrics."""
    columns = ["run", "id", *(["parent"] if runs["parent"].astype(bool).any() else []), "status"]
    head = runs.assign(id=runs["run_id"].str[:8])[columns]
    shown = differing_params(runs, param_patterns)
    params = runs[[f"params.{p}" for p in shown]].rename(columns=lambda c: c.removeprefix("params."))
    return head, params, final_metrics(runs, metric_patterns)


def comparison_table(
    runs: pd.DataFrame, metric_patterns: list[str] | None = None, param_patterns: list[str] | None = None
) -> pd.DataFrame:
    """One row per run: run (name), id (first 8 characters, since fit and test of a config are two runs of the same
    name), parent (only when some run is nested), status, the differing parameters, the final metrics (each kept
    to those matching the globs, when given)."""
    head, params, metrics = _table_parts(runs, metric_patterns, param_patterns)
    return head.join(params).join(metrics).reset_index(drop=True)


def _cell(value: object) -> str:
    """A table cell: metrics to 4 significant digits, "-" for a value the run did not log."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def text_table(
    runs: pd.DataFrame,
    metric_patterns: list[str] | None = None,
    width: int = 120,
    param_patterns: list[str] | None = None,
) -> str:
    """The comparison table turned for reading: one column per run (headed by its name), rows id, parent, status,
    then the differing params, then the final metrics, with a rule between the three groups. Long names and values
    (paths) wrap inside their cell instead of widening the table: the run columns are narrowed (from VALUE_WIDTH
    down to VALUE_MIN_WIDTH characters) until all runs fit side by side in `width` characters; when even that is
    too wide, the runs go to blocks that fit, each repeating the row names. No line is longer than `width`."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if width < MIN_WIDTH:
        raise ValueError(f"--width {width} is too narrow for the table; give at least {MIN_WIDTH}")
    head, params, metrics = _table_parts(runs, metric_patterns, param_patterns)
    groups = [
        [(c, [_cell(v) for v in part[c]]) for c in part.columns if c != "run"] for part in (head, params, metrics)
    ]
    names = [_cell(v) for v in head["run"]]
    rows = [row for group in groups for row in group]
    label_width = min(max(len(label) for label, _ in rows), LABEL_WIDTH, width - 3 - VALUE_MIN_WIDTH)
    natural = [max(len(name), *(len(cells[j]) for _, cells in rows)) for j, name in enumerate(names)]
    for value_width in range(min(VALUE_WIDTH, width - label_width - 3), VALUE_MIN_WIDTH - 1, -1):
        widths = [min(n, value_width) for n in natural]
        if label_width + sum(3 + w for w in widths) <= width:  # 3: the column rule " │ "
            break
    else:
        widths = [min(n, VALUE_WIDTH, width - label_width - 3) for n in natural]
    blocks, used = [[]], label_width
    for j, column_width in enumerate(widths):
        if blocks[-1] and used + 3 + column_width > width:
            blocks.append([])
            used = label_width
        blocks[-1].append(j)
        used += 3 + column_width
    text = io.StringIO()
    console = Console(file=text, width=width, color_system=None, highlight=False)
    for k, block in enumerate(blocks):
        table = Table(box=box.MINIMAL, show_edge=False, pad_edge=False)
        table.add_column("run", width=label_width, overflow="fold")
        for j in block:
            table.add_column(names[j], width=widths[j], overflow="fold")
        for group in groups:
            for i, (label, cells) in enumerate(group):
                table.add_row(label, *(cells[j] for j in block), end_section=i == len(group) - 1)
        if k:
            console.print()
        console.print(table)
    return "\n".join(line.rstrip() for line in text.getvalue().splitlines())


def markdown_table(
    runs: pd.DataFrame, metric_patterns: list[str] | None = None, param_patterns: list[str] | None = None
) -> str:
    """The comparison table in Markdown (one row per run), for a paper or a README."""
    table = comparison_table(runs, metric_patterns, param_patterns)
    lines = [list(table.columns), ["---"] * len(table.columns)]
    lines += [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def csv_table(
    runs: pd.DataFrame, metric_patterns: list[str] | None = None, param_patterns: list[str] | None = None
) -> str:
    """The comparison table as CSV for scripts: one row per run, the full run id, full-precision metrics, empty
    cells for what a run did not log."""
    table = comparison_table(runs, metric_patterns, param_patterns)
    table = table.assign(id=runs["run_id"]).rename(columns={"id": "run_id"})
    return table.to_csv(index=False)


def json_records(
    runs: pd.DataFrame, metric_patterns: list[str] | None = None, param_patterns: list[str] | None = None
) -> str:
    """One JSON object per run: run, run_id, parent, status, start_time (ISO 8601, UTC), params (the differing
    ones, as logged: strings) and metrics (final values); what a run did not log is absent."""
    import pandas as pd

    params = differing_params(runs, param_patterns)
    metrics = final_metrics(runs, metric_patterns)
    records = [
        {
            "run": run["run"],
            "run_id": run["run_id"],
            "parent": run["parent"],
            "status": run["status"],
            "start_time": run["start_time"].tz_localize("UTC").isoformat(),
            "params": {p: run[f"params.{p}"] for p in params if pd.notna(run[f"params.{p}"])},
            "metrics": {m: float(v) for m, v in metrics.loc[i].items() if pd.notna(v)},
        }
        for i, run in runs.iterrows()
    ]
    return json.dumps(records, indent=2)


def _labels(runs: pd.DataFrame) -> list[str]:
    """Legend labels: the run name, with the short id when another run has the same name."""
    repeated = runs["run"].duplicated(keep=False)
    return [f"{n} ({i[:8]})" if r else n for n, i, r in zip(runs["run"], runs["run_id"], repeated, strict=True)]


def plot_comparison(runs: pd.DataFrame, tracking_uri: str, out: str | Path) -> Path:
    """Write a PNG: one panel per training curve in `CURVES` that some run logged (reward, hint rate, zero-std
    groups, loss; over steps, one line per run) and a bar chart of the final test metrics in `BAR_METRICS` for
    every dataset (runs without test metrics get no bars). A panel no run has is left out; with nothing at all to
    draw the PNG says so. Uses the Agg canvas directly, so it never changes pyplot's backend (a notebook keeps its
    inline plots)."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    client = _client(tracking_uri)
    labels = _labels(runs)
    curves = [m for m in CURVES if f"metrics.{m}" in runs.columns and runs[f"metrics.{m}"].notna().any()]
    bars = sorted(
        c
        for c in runs.columns
        if c.startswith("metrics.test/") and c.count("/") == 2 and c.rsplit("/", 1)[-1] in BAR_METRICS  # no slices
    )
    ncols = max(len(curves), 1)
    nrows = (1 if curves else 0) + (1 if bars else 0)
    fig = Figure(figsize=(4.5 * ncols, 3.8 * max(nrows, 1)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(max(nrows, 1), ncols)
    for col, metric in enumerate(curves):
        ax = fig.add_subplot(grid[0, col])
        for run_id, label, value in zip(runs["run_id"], labels, runs[f"metrics.{metric}"], strict=True):
            if pd.notna(value):  # the run logged this metric
                history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
                ax.plot(*zip(*history, strict=True), label=label, marker="." if len(history) < 30 else None)
        ax.set(title=metric, xlabel="step")
        ax.legend(fontsize=7)
    if bars:
        ax = fig.add_subplot(grid[nrows - 1, :])
        tested = runs[bars].notna().any(axis=1)
        width = 0.8 / tested.sum()
        shown = zip(pd.Series(labels, index=runs.index)[tested], runs.loc[tested, bars].values, strict=True)
        for i, (label, values) in enumerate(shown):
            drawn = ax.bar([x + i * width for x in range(len(bars))], values.astype(float), width=width, label=label)
            ax.bar_label(drawn, fmt="%.3g", fontsize=6)  # a 0.0 bar would be invisible
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(bars))])
        ax.set_xticklabels([b.removeprefix("metrics.test/") for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_title("final test metrics")
        ax.legend(fontsize=7)
    if not nrows:
        fig.text(0.5, 0.5, f"no run logged {', '.join(CURVES)} or a test metric", ha="center", va="center")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def main(
    experiment: str | None,
    tracking_uri: str | None,
    out: str | None,
    metrics: list[str] | None,
    run_name_contains: str | None,
    format: str = "text",
    width: int | None = None,
    params: list[str] | None = None,
) -> None:
    """The `compare` command (options documented in msathinker.commands.compare): print the table, write the plot.
    A missing or unknown experiment or tracking database, or a bad --format or --width, exits with the reason (and
    the experiments that exist). With --format text the summary and the plot's path go to stdout with the table;
    with the other formats stdout holds only the table, and they go to stderr."""
    from msathinker.tracking import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        if format not in FORMATS:
            raise ValueError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
        if experiment is None:
            raise ValueError(f"give --experiment NAME; experiments at {tracking_uri}: {experiment_names(tracking_uri)}")
        runs = load_runs(experiment, tracking_uri, run_name_contains)
        if format == "text":
            width = width or (shutil.get_terminal_size().columns if sys.stdout.isatty() else 120)
            table = text_table(runs, metrics, width, params)
        else:
            table = {"markdown": markdown_table, "csv": csv_table, "json": json_records}[format](runs, metrics, params)
    except ValueError as exc:
        raise SystemExit(f"compare: {exc}") from exc
    notes = sys.stdout if format == "text" else sys.stderr
    differing, total = len(differing_params(runs)), sum(c.startswith("params.") for c in runs.columns)
    print(f"experiment {experiment!r} at {tracking_uri}: {len(runs)} runs; {differing} of {total} params differ",
          file=notes)  # fmt: skip
    print(table.rstrip("\n"))
    png = plot_comparison(runs, tracking_uri, out or f"compare-{experiment.replace('/', '_')}.png")
    print(f"plot: {png}", file=notes)
