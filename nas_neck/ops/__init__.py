"""Building blocks of neck graphs: resampling, fusion and refinement blocks."""

from nas_neck.ops.blocks import BLOCKS, make_block
from nas_neck.ops.conv import ConvBnAct
from nas_neck.ops.fusion import FUSE_OPS, make_fusion
from nas_neck.ops.resample import DOWNSAMPLE_MODES, UPSAMPLE_MODES, Resample

__all__ = [
    "BLOCKS",
    "DOWNSAMPLE_MODES",
    "FUSE_OPS",
    "UPSAMPLE_MODES",
    "ConvBnAct",
    "Resample",
    "make_block",
    "make_fusion",
]
