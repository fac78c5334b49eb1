"""Data pipeline: AnyWord-3M rows (``datasets``) -> AnyText2 samples -> Batch. Never imports models."""

from .anyword import AnyWord3M, AnyWord3MConfig, export_parquet, load_anyword, load_parquet
from .batch import Batch
from .fonts import FontConfigError, FontRegistry
from .sample import AnyText2TrainDataset, Collator, DataConfig, EpochSampler, FaultCounter, Sample, collate_samples
from .synth import make_demo_data

__all__ = [
    "AnyText2TrainDataset",
    "AnyWord3M",
    "AnyWord3MConfig",
    "Batch",
    "Collator",
    "DataConfig",
    "EpochSampler",
    "FaultCounter",
    "FontConfigError",
    "FontRegistry",
    "Sample",
    "collate_samples",
    "export_parquet",
    "load_anyword",
    "load_parquet",
    "make_demo_data",
]
