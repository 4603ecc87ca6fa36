"""The model file: format constants, reading and checking an archive's metadata, loading it.

Only `torch.jit.load`, and only after the metadata checks out: no pickle from a user file is
ever unpickled.
"""

import json
import os
import zipfile
from typing import Dict, List, Optional, Tuple

import torch

from .contract import ModelCapabilities, ModelMetadata
from .errors import first_line

FORMAT_NAME = "atomplug"
FORMAT_VERSION = 1
METADATA_FILE = "atomplug-metadata.json"
MAX_METADATA_BYTES = 16 << 20  # real metadata is a few kB; this bounds what a hostile file can make us read


class LoadedModel:
    """An exported model ready to run: the TorchScript entry point plus its declarations."""

    def __init__(self, module: torch.jit.ScriptModule, header: Dict, path: str):
        self.module = module
        self.path = path
        self.format_version = int(header["format_version"])
        self.capabilities = ModelCapabilities.from_dict(header["capabilities"])
        self.metadata = ModelMetadata.from_dict(header["metadata"])
        self.exported_with_torch = str(header.get("torch_version", "unknown"))

    def neighbor_requests(self, length_unit: str) -> List[Tuple[float, bool, bool]]:
        """(cutoff in `length_unit`, full_list, strict) for each neighbor list the model needs."""
        return [tuple(r) for r in self.module.neighbor_requests(length_unit)]

    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        return float(self.module.unit_conversion(from_unit, to_unit))

    def __repr__(self) -> str:
        outputs = ", ".join(self.capabilities.outputs)
        return f"LoadedModel({self.metadata.name or self.path!r}, outputs: {outputs})"


def read_header(path: str) -> Dict:
    """Read and check an archive's atomplug metadata without loading any of its code."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model file {path!r} does not exist: export one with atomplug.core.export() or "
            "`atomplug export-example lj model.pt`"
        )
    if os.path.isdir(path):
        raise ValueError(
            f"model path {path!r} is a directory, not an exported atomplug model file: give the .pt file"
        )
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ValueError(f"cannot read the model file {path!r} ({error.strerror}): check its permissions") from None
    if not magic:
        raise ValueError(
            f"{path!r} is empty (0 bytes), not an atomplug model: an export or a copy did not finish; "
            "export the model again"
        )
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # zipfile.is_zipfile raises BadZipFile itself for some end records (multi-disk)
        is_zip = False
    if not is_zip:
        if magic == b"PK\x03\x04":  # a zip archive without its end: cut short
            raise ValueError(
                f"{path!r} is a corrupt or truncated archive (an unfinished export, download or copy?): "
                "export or copy the model again"
            )
        raise ValueError(
            f"{path!r} is not an atomplug model: it is not a TorchScript archive (export models "
            "with atomplug.core.export())"
        )
    candidates: List[str] = []
    is_torchscript = False
    declared = 0
    raw = b""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            candidates = [n for n in names if n.endswith("/extra/" + METADATA_FILE)]
            is_torchscript = any("/code/" in n for n in names)
            if candidates:
                declared = archive.getinfo(candidates[0]).file_size
                if declared <= MAX_METADATA_BYTES:  # a zip bomb is refused from its declared size
                    with archive.open(candidates[0]) as handle:
                        raw = handle.read(MAX_METADATA_BYTES + 1)
    except Exception as error:  # zipfile raises many kinds for damaged archives: BadZipFile,
        # NotImplementedError (compression, version), RuntimeError (encrypted), zlib/lzma errors, EOFError...
        raise ValueError(
            f"{path!r} is a corrupt or truncated archive ({type(error).__name__}: {error}): export the model again"
        ) from None
    if not candidates:
        kind = "a TorchScript archive" if is_torchscript else "a zip file (perhaps a torch.save pickle)"
        raise ValueError(
            f"{path!r} is {kind} without atomplug metadata, not an atomplug model: wrap and "
            "export the module with atomplug.core.export()"
        )
    if declared > MAX_METADATA_BYTES or len(raw) > MAX_METADATA_BYTES:
        raise ValueError(
            f"{path!r} has {declared} bytes of atomplug metadata, more than any export writes "
            f"({MAX_METADATA_BYTES}): not an atomplug model; export the model again"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValueError(f"{path!r} has unreadable atomplug metadata ({reason}): export the model again") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} has metadata that is not atomplug's: export the model with atomplug.core.export()")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path!r} has no valid format version in its metadata: export the model again")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written in atomplug model format {version}, newer than this atomplug "
            f"understands ({FORMAT_VERSION}): upgrade atomplug"
        )
    for key in ("capabilities", "metadata"):
        if not isinstance(header.get(key), dict):
            raise ValueError(f"{path!r} metadata lacks {key!r}: export the model again")
    # Everything that reads the header later (load_model, LoadedModel, `atomplug info`, PLUMED's
    # helpers) may then trust its shape: checked here, as export() checked it when writing.
    try:
        ModelCapabilities.from_dict(header["capabilities"]).validate()
        ModelMetadata.from_dict(header["metadata"])
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RuntimeError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else first_line(error)
        raise ValueError(f"{path!r} has malformed atomplug metadata ({reason}): export the model again") from None
    return header


def check_device(device: str, supported_devices: List[str]) -> str:
    """`device` if it is a torch device that the model supports and this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type not in supported_devices:
        raise ValueError(
            f"the model supports devices {supported_devices}, not {device!r}: pick one of those"
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked, but torch {torch.__version__} sees no CUDA device: use device 'cpu'"
        )
    return device


def load_model(path: str, device: Optional[str] = None) -> LoadedModel:
    """Load an exported atomplug model (only `torch.jit.load`, and only after its metadata checks
    out: no pickle from a user file is ever unpickled)."""
    path = os.fspath(path)
    header = read_header(path)
    capabilities = ModelCapabilities.from_dict(header["capabilities"])
    device = check_device(device or "cpu", capabilities.supported_devices)
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as error:
        raise ValueError(f"{path!r} could not be loaded by TorchScript ({first_line(error)}): export the model again") from error
    for method in ("format_version", "neighbor_requests", "unit_conversion", "capabilities_json"):
        if not hasattr(module, method):
            raise ValueError(f"{path!r} lacks the atomplug entry point ({method}): export the model again")
    if int(module.format_version()) != int(header["format_version"]):
        raise ValueError(f"{path!r}: archive code and metadata disagree on the format version: export the model again")
    # The entry point converts units and checks outputs with what was compiled into the archive;
    # metadata claiming anything else (an edited or spliced file) would mislead every engine.
    if json.loads(module.capabilities_json()) != header["capabilities"]:
        raise ValueError(
            f"{path!r}: its metadata declares other outputs, units or types than its code (the file "
            "was edited or assembled by hand): export the model again with atomplug.core.export()"
        )
    module.eval()
    return LoadedModel(module, header, path)
