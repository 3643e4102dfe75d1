"""The search-space DSL: YAML spaces, parameter domains, samplers and concrete architectures."""

from nas_neck.dsl.architecture import Architecture, Node
from nas_neck.dsl.sampling import FixedSampler, OptunaSampler, RandomSampler, Sampler
from nas_neck.dsl.shipped import find_space, shipped_names, shipped_spaces, space_ref
from nas_neck.dsl.space import SearchSpace, load_architecture, load_space

__all__ = [
    "Architecture",
    "FixedSampler",
    "Node",
    "OptunaSampler",
    "RandomSampler",
    "Sampler",
    "SearchSpace",
    "find_space",
    "load_architecture",
    "load_space",
    "shipped_names",
    "shipped_spaces",
    "space_ref",
]
