"""Building blocks of neck graphs: resampling, fusion and refinement blocks.

Each family has one registry, name -> factory (`BLOCKS`, `FUSE_OPS`, `UPSAMPLE_MODES`,
`DOWNSAMPLE_MODES`), whose keys are the values the DSL accepts. The package imports only
torch and the standard library: `nas_neck.export` copies its classes' source verbatim
into standalone `neck.py` files.
"""

from nas_neck.ops.blocks import BLOCKS, deep, make_block, repeated
from nas_neck.ops.conv import ConvAct, ConvBnAct
from nas_neck.ops.fusion import FUSE_OPS, Fusion, fusion_is_ordered, make_fusion
from nas_neck.ops.registry import build
from nas_neck.ops.resample import DOWNSAMPLE_MODES, UPSAMPLE_MODES, Resample

__all__ = [
    "BLOCKS",
    "DOWNSAMPLE_MODES",
    "FUSE_OPS",
    "UPSAMPLE_MODES",
    "ConvAct",
    "ConvBnAct",
    "Fusion",
    "Resample",
    "build",
    "deep",
    "fusion_is_ordered",
    "make_block",
    "make_fusion",
    "repeated",
]
