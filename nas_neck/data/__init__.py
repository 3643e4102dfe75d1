"""Data: synthetic colony plates, COCO datasets (checked, letterboxed), AGAR conversion, and the
frozen-backbone feature cache every trial trains on."""

from nas_neck.data.agar import AgarConversion, convert_agar
from nas_neck.data.cache import VIEWS, FeatureCache, default_cache_root
from nas_neck.data.coco import CheckReport, CocoDetection, Issue, check_coco
from nas_neck.data.synth import (
    DEFAULT_SEED,
    DEFAULT_SIZE,
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    SPECIES,
    SyntheticDataset,
    ensure_default_dataset,
    generate_synthetic,
)

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "DEFAULT_TRAIN",
    "DEFAULT_VAL",
    "SPECIES",
    "VIEWS",
    "AgarConversion",
    "CheckReport",
    "CocoDetection",
    "FeatureCache",
    "Issue",
    "SyntheticDataset",
    "check_coco",
    "convert_agar",
    "default_cache_root",
    "ensure_default_dataset",
    "generate_synthetic",
]
