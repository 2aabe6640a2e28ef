"""Test setup: everything libraries write goes to the repo's .cache or a temp dir, never to $HOME."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="msathinker-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
os.environ.setdefault("MSATHINKER_CACHE", str(REPO / ".cache" / "msathinker"))
os.environ["MPLCONFIGDIR"] = str(_TMP / "matplotlib")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["TIKTOKEN_CACHE_DIR"] = str(_TMP / "tiktoken")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP / 'mlflow.db'}"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Path of the cached tiny random-init checkpoint (built on first use)."""
    from msathinker.assets import resolve_model_path

    return resolve_model_path("tiny")


@pytest.fixture(scope="session", params=["tiny", "tiny-qwen3"], ids=["qwen2_5_omni", "qwen3_omni"])
def omni_model(request) -> str:
    """Path of the cached tiny checkpoint of each model family: Qwen2.5-Omni ("tiny") and Qwen3-Omni-MoE
    ("tiny-qwen3"); a test using it runs once per family."""
    from msathinker.assets import resolve_model_path

    return resolve_model_path(request.param)


@pytest.fixture(scope="session")
def tiny_dc() -> str:
    """Path of the cached tiny thinker pre-trained on the demo's DC answers (built on first use)."""
    from msathinker.assets import resolve_model_path

    return resolve_model_path("tiny-dc")


@pytest.fixture(scope="session")
def demo_mosi() -> Path:
    """Root of the cached demo_mosi dataset (generated on first use)."""
    from msathinker.demo.assets import demo_dataset

    return demo_dataset("demo_mosi")


@pytest.fixture()
def media_cache(tmp_path: Path) -> str:
    return str(tmp_path / "media")
