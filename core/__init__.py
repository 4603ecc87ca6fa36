"""atomplug.core: the model contract and everything physical, shared by every engine adapter."""

from .options import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions
from .system import NeighborList, System
from .model import AtomisticModel, LoadedModel, export, load_model, read_header, FORMAT_VERSION, PER_ATOM_SUFFIX
from .runner import ModelRunner, Structure
from .units import conversion_factor

__all__ = [
    "AtomisticModel",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelCapabilities",
    "ModelMetadata",
    "ModelOutput",
    "ModelRunner",
    "NeighborList",
    "NeighborListOptions",
    "PER_ATOM_SUFFIX",
    "Structure",
    "System",
    "conversion_factor",
    "export",
    "load_model",
    "read_header",
]
