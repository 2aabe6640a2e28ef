"""Progress for log files: when stdout is not a terminal (nohup, SLURM, CI), a progress bar redraws itself with
carriage returns that a log file keeps as one ever-growing line, or shows nothing until the end. `ProgressLines`
prints a plain line every N units instead:

    train step 40/400 | train/loss 6.467 | 0.448 it/s | ETA 0:13:23

Training and testing use it through `callbacks.LineProgressBar` (the CLI picks it when stdout is not a terminal);
synthesis through `progress_bar`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import IO, Any


def duration(seconds: float) -> str:
    """h:mm:ss (whole seconds)."""
    return str(timedelta(seconds=round(seconds)))


def progress_line(
    desc: str, n: int, total: float | None, metrics: Mapping[str, float], rate: float | None, unit: str
) -> str:
    """`<desc> <n>/<total> | <metric> <value> ... | <rate> <unit>/s | ETA h:mm:ss`; the total and the ETA are left
    out when the total is unknown (None or inf), the rate and the ETA when nothing was timed yet."""
    known = total is not None and math.isfinite(total)
    parts = [f"{desc} {n}/{int(total)}" if known else f"{desc} {n}"]
    if metrics:
        parts.append(" ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
    if rate:
        parts.append(f"{rate:.3g} {unit}/s")
        if known:
            parts.append(f"ETA {duration(max(total - n, 0) / rate)}")
    return " | ".join(parts)


class ProgressLines:
    """A progress report: one line every `every_n` units and one at the end (`close`), each flushed at once.

    The rate is over the units since the previous line (the first line: since the start), so it follows the
    current speed; the ETA is the remaining units at that rate. `initial` is where a resumed count starts.
    """

    def __init__(
        self,
        desc: str,
        total: float | None,
        unit: str = "it",
        every_n: int = 10,
        initial: int = 0,
        file: IO[str] | None = None,
    ):
        if every_n < 1:
            raise ValueError(f"progress every_n must be at least 1, got {every_n}")
        self.desc, self.total, self.unit, self.every_n = desc, total, unit, every_n
        self.n = self._printed = initial
        self._file = file
        self._printed_at = self._started = time.perf_counter()

    def update(self, n: int = 1, metrics: Mapping[str, float] | None = None) -> None:
        """Count `n` more units; print a line when the count passes a multiple of `every_n`."""
        self.n += n
        if self.n // self.every_n > self._printed // self.every_n:
            self._print(metrics or {})

    def close(self, metrics: Mapping[str, float] | None = None) -> None:
        """The closing line: the count, `metrics` and the time since the start."""
        line = progress_line(self.desc, self.n, self.total, metrics or {}, None, self.unit)
        print(f"{line} | done in {duration(time.perf_counter() - self._started)}", **self._out())

    def _print(self, metrics: Mapping[str, float]) -> None:
        now = time.perf_counter()
        rate = (self.n - self._printed) / (now - self._printed_at) if now > self._printed_at else None
        print(progress_line(self.desc, self.n, self.total, metrics, rate, self.unit), **self._out())
        self._printed, self._printed_at = self.n, now

    def _out(self) -> dict[str, Any]:
        return {"file": self._file or sys.stdout, "flush": True}


def progress_bar(total: int, desc: str, unit: str, every_n: int, disable: bool = False) -> Any:
    """tqdm's bar when stdout is a terminal, else `ProgressLines` (a line every `every_n` units); both count with
    `update()` and end with `close()`."""
    if disable or sys.stdout.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=disable)
    return ProgressLines(desc, total, unit, every_n)
