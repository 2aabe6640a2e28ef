"""The synthesis output: an append-only JSONL file that survives kill -9.

Each completed clip is one line, written with a single write, flushed and fsync'ed before the next clip starts, so a
kill loses at most the clip in flight. On open, a torn last line (a kill during the write) is cut off with a
warning; a bad line anywhere else is an error naming the line, because silently dropping it would lose user data.
Ids already in the file are skipped by the run, so re-running the same command resumes without duplicates.

The file holds one record per clip, so its readers (SFT's targets, the summary) never have to pick between two.
To ask again for clips whose record is a teacher error (`retry_failed`), `drop` first removes those records: it
writes the remaining lines to `<name>.rewrite`, fsyncs it and renames it over the file (an atomic replace), so a
kill leaves either the old file or the new one; a leftover `.rewrite` file (a kill before the rename) is deleted
on open. A dropped clip has no record until its new one is appended, and any later run asks for it again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RecordStore:
    """Append-only JSONL of synthesis records keyed by clip id."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._rewrite_path.unlink(missing_ok=True)  # an interrupted `drop`: the file itself is still the old one
        if self.path.exists():
            self._load()
        self.done = {r["id"] for r in self.records}

    @property
    def _rewrite_path(self) -> Path:
        return self.path.with_name(self.path.name + ".rewrite")

    def _load(self) -> None:
        data = self.path.read_bytes()
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: the last line is incomplete (interrupted write); removing it", self.path)
        lines = data[:keep].decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # complete but unparsable last line: also a torn write
                    log.warning("%s:%d: unparsable last line (interrupted write); removing it", self.path, number)
                    keep = len("".join(f"{x}\n" for x in lines[:-1]).encode("utf-8"))
                    break
                raise ValueError(f"{self.path}:{number}: not valid JSON ({exc.msg}); fix or remove the line") from exc
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError(f"{self.path}:{number}: a synthesis record needs an 'id'")
            self.records.append(record)
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def drop(self, ids: set[str]) -> None:
        """Remove the records of `ids` from the file with an atomic replace (see the module docstring)."""
        if not ids & self.done:
            return
        self.records = [r for r in self.records if r["id"] not in ids]
        with open(self._rewrite_path, "wb") as f:
            f.write(b"".join(_line(r) for r in self.records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._rewrite_path, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.done -= ids

    def append(self, record: dict[str, Any]) -> None:
        line = _line(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(record["id"])


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
