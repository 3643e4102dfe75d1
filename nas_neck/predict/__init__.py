"""Prediction on photos: load a trained or exported detector, read photos of any kind, detect
whole or in tiles (optionally cropped to the dish), write pictures, counts and COCO detections."""

from nas_neck.predict.run import Item, PredictOptions, PredictReport, collect_inputs, predict_photos
from nas_neck.predict.sources import LoadedModel, from_checkpoint, from_export, load_model

__all__ = [
    "Item",
    "LoadedModel",
    "PredictOptions",
    "PredictReport",
    "collect_inputs",
    "from_checkpoint",
    "from_export",
    "load_model",
    "predict_photos",
]
