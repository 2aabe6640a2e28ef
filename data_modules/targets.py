"""The SFT targets file: a JSONL of {"id", "completion"} records, e.g. the teacher synthesis output."""

from __future__ import annotations

import json
from pathlib import Path

from data_modules.labels import DataError


def read_targets(path: Path) -> dict[str, str]:
    """SFT targets from a JSONL of {"id", "completion"} records (synthesis output: rows with kept=false ignored)."""
    targets: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "id" not in record or "completion" not in record:
                raise DataError(f"{path}:{line_no}: a target record needs the keys 'id' and 'completion'")
            if record.get("kept") is False:
                continue
            if record["id"] in targets:
                raise DataError(f"{path}:{line_no}: duplicate target for clip {record['id']!r}")
            targets[record["id"]] = record["completion"]
    return targets
