"""The MMSA label table (<root>/label.csv): one validated record per clip, or a message naming the bad row."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from msathinker.scales import Scale

REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MODES = ("train", "valid", "test")


class DataError(ValueError):
    """Bad dataset input; the message names the file, clip or key and the problem."""


@dataclass(frozen=True)
class ClipRecord:
    id: str
    """MMSA's sample id: video_id + "$_$" + clip_id."""
    video_id: str
    clip_id: str
    text: str
    label: float
    mode: str
    path: Path
    slice: str = ""
    """The clip's value in the table's slice column (evaluation reports metrics per value); "" when none."""


def clip_id_of(video_id: str, clip_id: str) -> str:
    return f"{video_id}$_${clip_id}"


def read_label_table(
    root: Path, scale: Scale, on_bad_clip: Literal["error", "skip"] = "error", slice_column: str | None = None
) -> tuple[list[ClipRecord], list[str]]:
    """Parse and validate `root`/label.csv. Returns the good records and one message per skipped row.

    Table-level problems (missing file or column, `slice_column` included) always raise; per-clip problems raise
    DataError unless on_bad_clip == "skip", where they are returned as messages and the clip is left out. Each
    record's `slice` is its `slice_column` value, stripped.
    """
    label_csv = root / "label.csv"
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: file not found (expected the MMSA layout: <root>/label.csv, <root>/Raw/...)")
    data = label_csv.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{label_csv}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the table as UTF-8 "
            "(in Excel: CSV UTF-8)"
        ) from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": csv itself reads \n and \r\n line ends
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{label_csv}: missing column(s) {', '.join(missing)}; has {reader.fieldnames}")
    if slice_column is not None and slice_column not in (reader.fieldnames or []):
        raise DataError(
            f"{label_csv}: no column {slice_column!r} to report metrics per slice of (data.init_args.slice_column); "
            f"the table has {reader.fieldnames}: name one of them, or set slice_column: null"
        )
    rows = list(reader)
    raw_root = (root / "Raw").resolve()
    problems: list[str] = []
    records: list[ClipRecord] = []
    first_line: dict[str, int] = {}
    duplicated: set[str] = set()

    def bad(line: int, cid: str, problem: str) -> None:
        message = f"{label_csv}:{line}: clip {cid!r}: {problem}"
        if on_bad_clip == "error":
            raise DataError(message)
        problems.append(message)

    for line, row in enumerate(rows, start=2):
        video_id, clip = (row["video_id"] or "").strip(), (row["clip_id"] or "").strip()
        cid = clip_id_of(video_id, clip)
        if cid in first_line:
            bad(line, cid, f"duplicate id (first seen on line {first_line[cid]})")
            duplicated.add(cid)
            continue
        first_line[cid] = line
        path = (raw_root / video_id / f"{clip}.mp4").resolve()
        if not video_id or not clip or raw_root not in path.parents:
            bad(line, cid, f"id would resolve outside the dataset's Raw/ directory ({path})")
            continue
        try:
            label = float(row["label"])
        except (TypeError, ValueError):
            bad(line, cid, f"label {row['label']!r} is not a number")
            continue
        if not math.isfinite(label) or not scale.contains(label):
            bad(line, cid, f"label {label} outside the {scale.name} scale [{scale.low}, {scale.high}]")
            continue
        mode = (row["mode"] or "").strip()
        if mode not in MODES:
            bad(line, cid, f"mode {mode!r} is not one of {MODES}")
            continue
        part = (row[slice_column] or "").strip() if slice_column is not None else ""
        records.append(ClipRecord(cid, video_id, clip, row["text"] or "", label, mode, path, part))
    if duplicated:  # which of two rows is right is unknown: with skip, drop every row of a duplicated id
        records = [r for r in records if r.id not in duplicated]
    return records, problems
