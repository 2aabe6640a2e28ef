"""What the SFT and Hint-GRPO LightningModules share: the constructor arguments of both stages, the connection to
the data (`DataInfo`, made in setup), building the policy in configure_model (so FSDP2 can shard it),
generation-based validation/test/predict with MMSA metrics, lean checkpoints, and the adapter export.

SFTModule adds a setup check (the data has targets) and its training_step; HintGRPOModule adds its own arguments, a
setup check of the data, the frozen reference adapter (configure_model), its rollouts and training_step, and its
hint counters and generator state in the checkpoint hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from msathinker.checkpoints import finish_checkpoint, keep_only_trainable_weights, restore_rng_states
from msathinker.dc_format import Format
from msathinker.evaluation import CompletionEvaluator, GenerationOptions, generate_completions
from msathinker.generation import thinker_of
from msathinker.policy import PolicyOptions, build_policy, check_update_resolution, validate_policy_options
from msathinker.scales import Scale, ScaleName
from msathinker.sharding import check_fsdp2_options, is_sharded, shard_policy


@dataclass(frozen=True)
class DataInfo:
    """What a module knows about its data: read from the DataModule in one place (`DataInfo.of`, called by
    `OmniPolicyModule.setup`), so no other code reaches into the DataModule and an option such as the output format
    is set once, on the data."""

    dataset: str
    """Dataset name (data.init_args.dataset); evaluation logs `<stage>/<dataset>/<metric>`."""
    scale: Scale
    """The dataset's label scale: polarity bands, the score reward's tau, MMSA's metric family."""
    output_format: Format
    """The completion format the prompts ask for (data.init_args.output_format): completions are parsed with it and
    hint prefixes written in it."""
    batch_size: int
    """Clips per training batch on each process (data.init_args.batch_size): Hint-GRPO's prompts per step."""
    has_targets: bool
    """Whether training batches carry SFT targets (data.init_args.targets is set)."""
    processor_path: str
    """The checkpoint whose processor builds the batches (data.init_args.processor_path): it must be of the
    policy's model family."""
    slices: dict[str, str] = field(default_factory=dict)
    """Clip id -> its value in the data's slice column (data.init_args.slice_column): evaluation also reports every
    metric per value. Empty: no slices."""

    @classmethod
    def of(cls, datamodule: L.LightningDataModule | None) -> DataInfo:
        """The DataInfo of an MSADataModule (or any DataModule with a `scale` and these hparams)."""
        if datamodule is None:
            raise ValueError(
                "the module reads its label scale, dataset name and output format from a DataModule: give the "
                "config a `data:` section (class_path data_modules.MSADataModule), or pass "
                "trainer.fit/validate/test/predict(model, datamodule=...)"
            )
        try:
            h = datamodule.hparams
            return cls(
                h.dataset, datamodule.scale, h.output_format, h.batch_size, h.targets is not None, h.processor_path,
                getattr(datamodule, "slices", {}),
            )  # fmt: skip
        except AttributeError as exc:
            raise TypeError(
                f"{type(datamodule).__name__} lacks what the module reads from its data ({exc}): use "
                "data_modules.MSADataModule or a subclass, or give yours `scale` and the hparams dataset, "
                "output_format, batch_size, targets and processor_path"
            ) from exc


class OmniPolicyModule(L.LightningModule):
    """A thinker with its processor, trained by a subclass and evaluated by generating and parsing completions.

    Args:
        policy: which checkpoint to load and what trains (LoRA, 4-bit base, frozen towers, checkpointing).
        optimizer: optimizer class and arguments (class_path/init_args), called with the trainable parameters.
        scheduler: optional learning-rate scheduler (class_path/init_args), stepped every optimizer step.
        generation: decoding settings of validation/test/predict.
        unparsed_score: the prediction scored for a completion with no parsable number (documented policy).
        prediction_scale: label range the model answers on ("mosei" = [-3, 3], "sims" = [-1, 1]) when evaluating
            on a dataset with another range (cross-domain); answers are mapped linearly. None: the dataset's own.

    Attributes read by the callbacks:
        data_info: what the module knows about its data (`DataInfo`), set in setup; None before.
        evaluator: the running evaluation (its `rows` are the parsed completions so far), created at the start of
            every validation/test/predict epoch; None before the first.
        has_adapter: whether the model trains a LoRA adapter that `save_adapter` can write.
    """

    def __init__(
        self,
        policy: PolicyOptions,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        generation: GenerationOptions = GenerationOptions(),
        unparsed_score: float = 0.0,
        prediction_scale: ScaleName | None = None,
    ):
        super().__init__()
        validate_policy_options(policy)
        # every __init__ argument of the class and its subclass except the plug-in objects (Hint-GRPO's rewards and
        # hint); the CLI logs the full resolved config instead
        self.save_hyperparameters(ignore=["rewards", "hint"], logger=False)
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.generation = generation
        self.unparsed_score = unparsed_score
        self.prediction_scale = prediction_scale
        self.model = None
        self.processor = None
        self.data_info: DataInfo | None = None
        self.evaluator: CompletionEvaluator | None = None
        self.strict_loading = False  # checkpoints hold the trainable weights only
        keep_only_trainable_weights(self)

    def setup(self, stage: str) -> None:
        """Connect to the data: every fit/validate/test/predict reads the DataInfo of the DataModule it is given."""
        self.data_info = DataInfo.of(self.trainer.datamodule)

    def configure_model(self) -> None:
        if self.model is None:
            mesh = self.device_mesh  # set by ModelParallelStrategy: FSDP2 over the data-parallel dimension
            if mesh is not None:
                check_fsdp2_options(mesh["tensor_parallel"].size(), self.policy.quantization)
            self.model, self.processor = build_policy(self.policy)
            self.check_data_processor()
            self.model.train()
            if mesh is not None:
                shard_policy(self.model, thinker_of(self.model), mesh["data_parallel"], self.policy.fsdp)

    def check_data_processor(self) -> None:
        """The data's processor (data.init_args.processor_path) must build inputs for the policy's model family."""
        from msathinker.assets import resolve_model_path
        from msathinker.modeling import check_processor_family, load_processor
        from msathinker.qwen_omni import family_of

        data_path = getattr(self, "data_info", None) and self.data_info.processor_path
        if data_path and resolve_model_path(data_path) != resolve_model_path(self.policy.model_path):
            where = f"data.init_args.processor_path {data_path!r}"
            check_processor_family(load_processor(data_path), family_of(thinker_of(self.model)), where)

    @property
    def synced_generation(self) -> bool:
        """Whether generate must keep every rank stepping until all are done (FSDP2 gathers weights collectively
        in each forward, so a rank that stopped early would leave the others waiting)."""
        return self.model is not None and is_sharded(self.model) and self.trainer.world_size > 1

    def configure_optimizers(self):
        names = {id(p): n for n, p in self.model.named_parameters() if p.requires_grad}
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        precision = str(self.trainer.precision)
        lora = self.policy.lora
        if lora and lora.modules_to_save and self.policy.dtype != "float32" and not precision.endswith("-mixed"):
            raise ValueError(
                f"policy.lora.modules_to_save {list(lora.modules_to_save)} train in float32 beside a "
                f"{self.policy.dtype} base, which feeds them {self.policy.dtype} inputs: that needs autocast. Set "
                f"trainer.precision bf16-mixed (it is {precision!r}) or policy.dtype float32."
            )
        check_update_resolution(names, optimizer, precision)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # --- evaluation ---------------------------------------------------------------------------------------------

    def _start_eval(self) -> None:
        data = self.data_info
        self.evaluator = CompletionEvaluator(
            data.scale, data.output_format, self.unparsed_score, self.prediction_scale, data.slices
        ).to(self.device)

    def _eval_step(self, batch: dict[str, Any]) -> None:
        completions = generate_completions(
            self.model, self.processor, batch["inputs"], self.generation, synced_gpus=self.synced_generation
        )
        self.evaluator.update(batch["meta"]["id"], completions, batch["meta"]["label"])

    def _end_eval(self, stage: str) -> None:
        metrics = self.evaluator.compute()
        # torchmetrics already reduced the states over the ranks: every rank logs the same values
        self.log_dict({f"{stage}/{self.data_info.dataset}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        before = len(self.evaluator.rows)
        self._eval_step(batch)
        return self.evaluator.rows[before:]

    # --- checkpoints and export ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        finish_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"], self.global_rank)

    @property
    def has_adapter(self) -> bool:
        return self.policy.lora is not None

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter in peft format (adapter_config.json + adapter_model.safetensors). Under FSDP2
        every rank must call it (the shards are gathered); global rank 0 writes."""
        if not self.has_adapter:
            raise ValueError("no LoRA adapter to save: this run trains the full model (policy.lora is null)")
        directory = Path(directory)
        state_dict = None
        if is_sharded(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
            state_dict = get_model_state_dict(self.model, options=options)
        if self._trainer is None or self.trainer.is_global_zero:
            self.model.save_pretrained(directory, selected_adapters=["default"], state_dict=state_dict)
        return directory
