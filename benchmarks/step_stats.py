"""What the GRPO benchmarks share: step-end timing and peak memory of one run, measured inside the process that
trains, and running each measured configuration in its own subprocess so the peaks do not mix.

Peak memory is read from /proc (Linux): `process_peak_mb` is the whole process's high-water mark (imports, model
load and training); `reset_peak` at train start plus `peak_since_reset_mb` at the end give the training peak above
the memory held when training started.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the process's RSS high-water mark (VmHWM) to its current RSS; returns that RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") / 1024


def peak_since_reset_mb() -> float:
    return _status_kb("VmHWM") / 1024


def process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Wall-clock times of optimizer-step ends; a step's time is the gap to the previous step end, so it covers
    everything the framework does per step (data, sampling, rewards, loss, backward, optimizer, logging)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.ends: list[float] = []
        self.train_start_rss_mb = 0.0

    def train_started(self) -> None:
        self.train_start_rss_mb = reset_peak()
        self.start = time.perf_counter()

    def step_ended(self) -> None:
        self.ends.append(time.perf_counter())

    def result(self, warmup: int, **extra) -> dict:
        """Step times after `warmup` steps and the peaks, as a JSON-able dict."""
        times = [b - a for a, b in zip([self.start, *self.ends], self.ends, strict=False)][warmup:]
        return {
            "step_times": times,
            "process_peak_mb": process_peak_mb(),
            "train_start_mb": self.train_start_rss_mb,
            "train_peak_mb": peak_since_reset_mb(),
            **extra,
        }


def lightning_step_clock(clock: StepClock):
    """A Lightning callback feeding `clock` (imported lazily: lightning takes seconds to import)."""
    import lightning as L

    class ClockCallback(L.Callback):
        def on_train_start(self, *_):
            clock.train_started()

        def on_train_batch_end(self, *_):
            clock.step_ended()

    return ClockCallback()


def run_worker(script: str, args: list[str]) -> dict:
    """Run `script --worker-out FILE args` in a fresh interpreter (same environment); returns the JSON it wrote."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"grpo-bench-{os.getpid()}-{time.monotonic_ns()}.json"
    try:
        subprocess.run(
            [sys.executable, script, "--worker-out", str(out), *args], check=True, env=os.environ, stdout=sys.stderr
        )
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def write_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result))
