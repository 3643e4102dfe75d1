"""Weight-sharing supernet for neck search (SPOS / OPANAS / Once-for-All style): every path of a
fixed-graph space in one module, subnets extracted with inherited weights, BatchNorm
recalibration and fast subnet evaluation, and single-path supernet training.

See docs/supernet.md.
"""

from nas_neck.supernet.supernet import Supernet, SupernetDetector, SupernetError, check_space

__all__ = ["Supernet", "SupernetDetector", "SupernetError", "check_space"]
