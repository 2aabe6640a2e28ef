"""The LightningCLI behind `python -m msathinker fit|validate|test|predict`."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from callbacks import CompletionsTable, ExportAdapter
from data_modules import MSADataModule
from msathinker.tracking import default_tracking_uri


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class SaveConfigToRun(SaveConfigCallback):
    """Writes the full resolved config to <default_root_dir>/config.yaml and logs it to MLflow: every key as a run
    parameter (dotted names, e.g. model.init_args.policy.lora.r) and the file as the artifact config.yaml."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
                logger.log_hyperparams(_flatten(self.config.as_dict()))
                logger.experiment.log_text(logger.run_id, text, self.config_filename)


class MSACLI(LightningCLI):
    """LightningCLI whose model and data are given by class_path/init_args. The model's checkpoint also picks the
    processor the DataModule uses, and its prediction_scale the range the prompt states."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.policy.model_path", "data.init_args.processor_path")
        parser.link_arguments("model.init_args.prediction_scale", "data.init_args.prompt_scale")
        parser.add_lightning_class_args(CompletionsTable, "completions_table")
        parser.add_lightning_class_args(ExportAdapter, "export_adapter")


def cli_kwargs() -> dict:
    """MSACLI's constructor arguments (the recipe builds stage CLIs with them too)."""
    return dict(
        datamodule_class=MSADataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToRun,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                "init_args": {"experiment_name": "msathinker", "tracking_uri": default_tracking_uri()},
            }
        },
    )


def cli_main(args: list[str] | None = None) -> MSACLI:
    return MSACLI(**cli_kwargs(), args=args)
