"""Where runs are tracked (importable without Lightning, for the non-training commands)."""

from __future__ import annotations

import os
from pathlib import Path


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite database mlflow.db in the working directory (mlflow 3's default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
