"""The LightningCLI behind `python -m msathinker fit|validate|test|predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonargparse import Path as ConfigPath
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins.io import CheckpointIO

from data_modules import MSADataModule
from msathinker.checkpoints import AtomicCheckpointIO
from msathinker.plugins import DEFAULTS, resolve
from msathinker.tracking import default_tracking_uri


def _param_value(value: object) -> object:
    """A config value as an MLflow parameter shows it: a path as the path given (jsonargparse's Path objects would
    show as `Path_fsr(<path>, cwd=...)`), a list or tuple as JSON (the form `--key value` takes), the rest as is."""
    if isinstance(value, ConfigPath):
        return str(value)
    if isinstance(value, list | tuple):
        return json.dumps([_param_value(v) for v in value])
    return value


def _flatten(tree: dict, prefix: str = "", separator: str = ".") -> dict[str, object]:
    """One parameter per leaf of the config: dotted names (model.init_args.policy.lora.r); a list of dicts (the
    trainer's callbacks) is numbered with "/" as Lightning names it (trainer.callbacks/0/init_args/dirpath)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}{separator}", separator))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(_flatten(item, f"{name}/{i}/", "/"))
        else:
            flat[name] = _param_value(value)
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
    processor the DataModule uses, and its prediction_scale the range the prompt states.

    The Trainer it builds also gets the completions-table and adapter-export callbacks (their sections
    `completions_table`, `export_adapter`) and, unless the config gives its own:
    - a progress bar (msathinker.plugins.DEFAULTS["progress_bar"]): Rich's bar on a terminal, a plain line every
      `progress.every_n_steps` steps when stdout is not a terminal (a log file); none with
      `trainer.enable_progress_bar: false`;
    - `msathinker.checkpoints.AtomicCheckpointIO` as its checkpoint writer (no half-written checkpoint file after a
      kill), unless `trainer.plugins` names a CheckpointIO;
    - `<trainer.default_root_dir>/checkpoints` as the directory of every ModelCheckpoint that names none, so a run's
      files are under the one directory its config names (Lightning's default would be a directory per MLflow run,
      where `--ckpt_path last` of a new run could not find the previous one's checkpoint).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.policy.model_path", "data.init_args.processor_path")
        parser.link_arguments("model.init_args.prediction_scale", "data.init_args.prompt_scale")
        parser.add_lightning_class_args(resolve(DEFAULTS["completions_table"]), "completions_table")
        parser.add_lightning_class_args(resolve(DEFAULTS["export_adapter"]), "export_adapter")
        parser.add_class_arguments(resolve(DEFAULTS["progress_options"]), "progress")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        given = config.get("callbacks") or []
        given = [*(given if isinstance(given, list) else [given]), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            progress_bar = resolve(DEFAULTS["progress_bar"])(self._get(self.config_init, "progress"))
            callbacks = [*callbacks, progress_bar]
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        run_checkpoints = str(Path(config.get("default_root_dir") or ".") / "checkpoints")
        for callback in given:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = run_checkpoints
        return super()._instantiate_trainer(config, callbacks)


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
