"""What our LightningModules add to and take from a Lightning checkpoint.

Checkpoints must load with torch.load(weights_only=True) (the default for local files), so everything stored is a
tensor or a plain Python value: hyper-parameters are flattened to dicts and class paths, the RNG states to lists.
Only trainable weights are stored: the frozen base is re-read from the model checkpoint. The LightningModule's
state_dict itself holds only them (a state_dict hook), because a distributed checkpoint (ModelParallelStrategy)
saves and loads exactly the keys of the module's state_dict. RNG states are stored for every rank.

A checkpoint is never seen half-written: `AtomicCheckpointIO` (installed by the CLI) writes a checkpoint file to a
temporary file in the same directory, fsyncs it and renames it over the target; `msathinker.sharding.
ModelParallelStrategy` writes a distributed (FSDP2) checkpoint directory beside its target and swaps it in
(`replace_directory`). A kill at any moment of a save leaves the previous checkpoint (or none) in place, and
`fit --ckpt_path last` finds a complete one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import io
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

WRITE_DELAY_ENV = "MSATHINKER_CHECKPOINT_WRITE_DELAY"
"""Test hook: seconds a checkpoint save pauses halfway through writing (a file) or before swapping in the written
directory (FSDP2), so that a test can kill the process in the middle of a save."""


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


def restore_rng_states(per_rank: list[dict[str, Any]], rank: int) -> None:
    """Restore this rank's RNG states (a run resumed on more ranks than it was saved from reuses them cyclically)."""
    states = per_rank[rank % len(per_rank)]
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def keep_only_trainable_weights(module: torch.nn.Module, attribute: str = "model") -> None:
    """Make `module.state_dict()` hold only the trainable parameters of `module.<attribute>`."""

    def hook(mod: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        inner = getattr(mod, attribute)
        trainable = set() if inner is None else {n for n, p in inner.named_parameters() if p.requires_grad}
        keep = {f"{prefix}{attribute}.{name}" for name in trainable}
        for key in [k for k in state_dict if k not in keep]:
            del state_dict[key]

    module.register_state_dict_post_hook(hook)


def finish_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Make hyper-parameters plain and add every rank's RNG states (on_save_checkpoint; a collective)."""
    from msathinker.sharding import all_gather_objects

    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in checkpoint:
            checkpoint[key] = plain(dict(checkpoint[key]))
    checkpoint["rng_states"] = all_gather_objects(rng_states())


def temporary_path(target: Path) -> Path:
    """Where a save of `target` writes before it is complete: `.<name>.<random>.tmp` beside it (the same
    filesystem, so the final rename is atomic; never matched by `last*.ckpt`, so `--ckpt_path last` ignores it)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_torn_saves(target: Path) -> None:
    """Delete what saves of `target` that were killed left (files or directories)."""
    for torn in target.parent.glob(f".{target.name}.*.tmp"):
        _remove(torn)


def pause_for_tests() -> None:
    """The WRITE_DELAY_ENV pause (none unless a test sets it)."""
    if delay := float(os.environ.get(WRITE_DELAY_ENV, 0)):
        time.sleep(delay)


def fsync_directory(directory: Path) -> None:
    """Make the renames in `directory` survive a power loss."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step: Linux's renameat2(RENAME_EXCHANGE), which Python's os module
    does not offer (hence ctypes). False where the C library or the filesystem (e.g. NFS) lacks it."""
    at_fdcwd, rename_exchange = -100, 2
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def replace_directory(written: Path, target: Path) -> None:
    """Put the complete directory `written` in the place of `target` (a checkpoint directory, a file, or nothing).

    With no target it is one rename. Otherwise the two are exchanged atomically where the system can (Linux,
    local filesystems), so `target` is at every moment the old or the new checkpoint, and the old one (now at
    `written`) is deleted. Elsewhere (a filesystem without the exchange, e.g. NFS) the old target is first renamed
    to `<stem>.old<suffix>` (last.old.ckpt): a kill between the two renames leaves it as the only complete
    checkpoint, which `--ckpt_path last` finds (it matches last*.ckpt); the next save deletes it.
    """
    aside = target.with_name(f"{target.stem}.old{target.suffix}")
    if not os.path.lexists(target):
        os.rename(written, target)
    elif _exchange(written, target):
        _remove(written)
    else:
        os.rename(target, aside)
        os.rename(written, target)
    if os.path.lexists(aside):
        _remove(aside)
    fsync_directory(target.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against a kill (or a crash, or a power loss) during the write.

    A local checkpoint is written to a temporary file beside it (`temporary_path`), flushed to disk (fsync),
    renamed over `<name>` (atomic on POSIX filesystems) and the directory entry fsync'ed: `<name>` is always either
    the previous complete checkpoint or the new complete one. A temporary file left by a killed save is removed by
    the next save of the same name. A path with a protocol (s3://, gs://, file://, ...) goes through Lightning's
    own writer. Loading is Lightning's (torch.load).

    Distributed (FSDP2) checkpoints are directories the strategy writes without this plugin: use
    `msathinker.sharding.ModelParallelStrategy` for those.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_torn_saves(target)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        temporary = temporary_path(target)
        try:
            with open(temporary, "xb") as file:  # the umask's permissions, as a plain save would have
                # two halves, so that the test hook's pause leaves a half-written file to be killed over
                file.write(data[: len(data) // 2])
                file.flush()
                pause_for_tests()
                file.write(data[len(data) // 2 :])
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(target.parent)
