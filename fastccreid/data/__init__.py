"""Dataset records, parsers, identity samplers, synthetic data and input pipelines."""

from fastccreid.data.datasets import DATASET_NAMES, build_dataset
from fastccreid.data.records import ImageRecord, ReIDDataset

__all__ = ["DATASET_NAMES", "ImageRecord", "ReIDDataset", "build_dataset"]
