"""LightningDataModules: the MMSA-layout multimodal data path shared by every stage."""

from data_modules.msa import DataError, MSACollator, MSADataModule, read_label_table

__all__ = ["DataError", "MSACollator", "MSADataModule", "read_label_table"]
