"""atomplug.core: the model contract and everything physical, shared by every engine adapter."""

from .archive import FORMAT_VERSION, LoadedModel, load_model, read_header
from .contract import PER_ATOM_SUFFIX, ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions
from .entry_point import AtomisticModel
from .export import export
from .graph import BatchedSystems, batch_systems, exchange_ghosts
from .runner import ModelRunner, Structure
from .system import GhostExchange, LocalGhostExchange, NeighborList, System
from .units import conversion_factor

__all__ = [
    "AtomisticModel",
    "BatchedSystems",
    "FORMAT_VERSION",
    "GhostExchange",
    "LoadedModel",
    "LocalGhostExchange",
    "ModelCapabilities",
    "ModelMetadata",
    "ModelOutput",
    "ModelRunner",
    "NeighborList",
    "NeighborListOptions",
    "PER_ATOM_SUFFIX",
    "Structure",
    "System",
    "batch_systems",
    "conversion_factor",
    "exchange_ghosts",
    "export",
    "load_model",
    "read_header",
]
