"""What our LightningModules add to and take from a Lightning checkpoint.

Checkpoints must load with torch.load(weights_only=True) (the default for local files), so everything stored is a
tensor or a plain Python value: hyper-parameters are flattened to dicts and class paths, the RNG states to lists.
Only trainable weights are stored: the frozen base is re-read from the model checkpoint.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch


def plain(value: Any) -> Any:
    """`value` as dicts, lists, strings and numbers (dataclasses as dicts, classes and callables by import path)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def rng_states() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": plain(random.getstate()),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_trainable(module: torch.nn.Module, checkpoint: dict[str, Any], prefix: str = "model.") -> None:
    """Keep only trainable weights, make hyper-parameters plain and add the RNG states (on_save_checkpoint)."""
    trainable = {f"{prefix}{name}" for name, p in module.named_parameters() if p.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in checkpoint:
            checkpoint[key] = plain(dict(checkpoint[key]))
    checkpoint["rng_states"] = rng_states()
