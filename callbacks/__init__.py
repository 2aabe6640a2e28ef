"""Trainer callbacks and the reward / hint plug-ins shared by the LightningModules."""

from callbacks.artifacts import CompletionsTable, ExportAdapter

__all__ = ["CompletionsTable", "ExportAdapter"]
