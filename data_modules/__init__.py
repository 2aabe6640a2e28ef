"""LightningDataModules: the MMSA-layout multimodal data path shared by every stage, and the demo's variant.

One module per concern: `labels` (the label table), `targets` (the SFT targets file), `media_cache` (decoding
once, to disk), `collator` (the prompt and the batch), `sampler` (the resumable training order), `datamodule`
(MSADataModule) and `demo` (DemoDataModule).
"""

from data_modules.collator import MSACollator
from data_modules.datamodule import MSADataModule
from data_modules.demo import DemoDataModule
from data_modules.labels import DataError, read_label_table

__all__ = ["DataError", "DemoDataModule", "MSACollator", "MSADataModule", "read_label_table"]
