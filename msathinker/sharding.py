"""FSDP2 (torch.distributed.fsdp.fully_shard) for the thinker, applied in configure_model under Lightning's
ModelParallelStrategy (or `ModelParallelStrategy` here, which adds crash-safe checkpoint directories), and the
collectives the training loops need on any strategy.

FSDP2 gathers a unit's parameters only in that unit's own forward hooks. The GRPO path calls submodules directly
(the towers' get_audio_features / get_video_features, the input embeddings, the language model, the LM head), so
each of those is a unit of its own, next to every decoder layer; the root unit holds what is left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch.strategies
import torch
from torch import nn

from msathinker.checkpoints import pause_for_tests, remove_torn_saves, replace_directory, temporary_path
from msathinker.policy import FSDPOptions
from msathinker.qwen_omni import init_fsdp_root


def check_fsdp2_options(tensor_parallel_size: int, quantization: str) -> None:
    """Fail before any weight is loaded on a ModelParallelStrategy setting this FSDP2 path cannot run."""
    if tensor_parallel_size != 1:
        raise ValueError(
            f"ModelParallelStrategy: tensor_parallel_size is {tensor_parallel_size}; set it to 1 (msathinker shards "
            "with FSDP2 over data parallelism only)"
        )
    if quantization != "none":
        raise ValueError(
            f"policy.quantization is {quantization!r}: a 4-bit base cannot be sharded with FSDP2; use the DDP "
            "strategy (or quantization: none)"
        )


def fsdp_units(thinker: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP2 units, innermost first: every decoder layer, the input embeddings, the
    language model (its final norm), the LM head, the audio and vision towers."""
    model = thinker.model
    language = model.language_model
    units = [*language.layers, language.embed_tokens, language, thinker.lm_head]
    units += [tower for tower in (getattr(model, "audio_tower", None), getattr(model, "visual", None)) if tower]
    return units


def shard_policy(model: nn.Module, thinker: nn.Module, mesh, options: FSDPOptions) -> None:
    """Shard `model` (the peft wrapper or the thinker itself) in place over the data-parallel `mesh`."""
    from torch.distributed.fsdp import fully_shard

    for unit in fsdp_units(thinker):
        fully_shard(unit, mesh=mesh, reshard_after_forward=options.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=options.reshard_after_forward)
    init_fsdp_root(model)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of `value` over all processes (itself when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
    return value


def all_gather_objects(value: object) -> list[object]:
    """`value` of every process, in rank order ([value] when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values: list[object] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(values, value)
        return values
    return [value]


class ModelParallelStrategy(lightning.pytorch.strategies.ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2; same arguments), with distributed checkpoints that survive a kill
    during their save.

    Lightning writes a distributed checkpoint (a directory: one `.distcp` shard per process, `.metadata`,
    `meta.pt`) in place, over the previous one: a kill during the save leaves old and new shards mixed. This
    strategy has every process write into a fresh directory beside the target (`.<name>.<random>.tmp`) and then
    rank 0 swaps it in whole (`msathinker.checkpoints.replace_directory`), so `last.ckpt` is always a complete
    checkpoint and `--ckpt_path last` resumes from it. A directory left by a killed save is removed by the next
    save. Saving a single file (`save_distributed_checkpoint: false`) goes through the CheckpointIO, as in
    Lightning. The target's filesystem must be shared by all processes (as Lightning's save needs anyway).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(str(filepath)))
        written = Path(self.broadcast(str(temporary_path(target))))
        if self.is_global_zero:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_torn_saves(target)
        self.barrier("ModelParallelStrategy.save_checkpoint")
        super().save_checkpoint(checkpoint, written, storage_options)
        self.barrier("ModelParallelStrategy.save_checkpoint")
        if self.is_global_zero:
            pause_for_tests()
            replace_directory(written, target)
        self.barrier("ModelParallelStrategy.save_checkpoint")
