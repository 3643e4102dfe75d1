"""Export a searched neck as a standalone PyTorch module, with its weights, ONNX and TorchScript.

`export_neck` writes the whole folder and checks every artefact against the trained neck;
`neck_source` and `fuse_neck` are its two building blocks.
"""

from nas_neck.export.export import ExportReport, export_neck, load_standalone
from nas_neck.export.fuse import fuse_neck
from nas_neck.export.source import SearchInfo, StandaloneSource, neck_source

__all__ = [
    "ExportReport",
    "SearchInfo",
    "StandaloneSource",
    "export_neck",
    "fuse_neck",
    "load_standalone",
    "neck_source",
]
