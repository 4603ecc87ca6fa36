"""Model files every engine must refuse, and models that fail at run time, for the bad-input and
fault tests of every engine (tests/<area>/test_<area>_bad_input.py and test_<area>_faults.py).

`write_model_file(kind, directory, good_model)` writes one broken, foreign or hostile file; each
engine must refuse it with one line that names the problem (`MODEL_FILE_PROBLEMS`) and the fix
(`MODEL_FILE_FIX`). The two pickles would create `unpickled_marker(directory)` if anything ever
unpickled them. `MODEL_FILE_FAULTS` says which of core's messages (atomplug.core.archive's
MODEL_FILE_MESSAGES) each kind gets, for these and a few more kinds (`MORE_MODEL_FILE_KINDS`), which
tests/lammps/test_model_file_messages.py feeds to core, LAMMPS and PLUMED alike.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from typing import Dict, List, Optional

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.core.archive import METADATA_FILE

# what each engine's message must say about the problem (a regular expression, case-sensitive)
MODEL_FILE_PROBLEMS: Dict[str, str] = {
    "missing": r"does not exist",
    "empty": r"is empty \(0 bytes\)",
    "truncated": r"corrupt",
    "text": r"not a TorchScript archive",
    "plain-torchscript": r"without atomplug metadata",
    "torch-save-pickle": r"without atomplug metadata",
    "raw-pickle": r"not a TorchScript archive",
    "future-version": r"format 99, newer than this",
    "not-atomplug-metadata": r"metadata that is not atomplug's",
    "metadata-lies-about-outputs": r"its metadata declares other outputs, units or types than its code",
    "metadata-lies-about-units": r"its metadata declares other outputs, units or types than its code",
}
# ... and the fix it must name
MODEL_FILE_FIX = r"export|upgrade atomplug|update atomplug"
MODEL_FILE_KINDS: List[str] = list(MODEL_FILE_PROBLEMS)

# more kinds, one per remaining check of the model file (core's words are the same for all engines)
MORE_MODEL_FILE_KINDS: List[str] = [
    "directory",
    "metadata-not-json",
    "metadata-nested-too-deeply",
    "metadata-too-large",
    "metadata-not-an-object",
    "no-format-version",
    "format-version-zero",
    "format-version-true",
    "metadata-lacks-capabilities",
    "metadata-lacks-metadata",
    "capabilities-lack-atomic-types",
    "output-lacks-unit",
    "foreign-code-with-metadata",
]
# the fault (a key of atomplug.core.archive.MODEL_FILE_MESSAGES) of each kind
MODEL_FILE_FAULTS: Dict[str, str] = {
    "missing": "missing",
    "empty": "empty",
    "truncated": "truncated",
    "text": "not_archive",
    "plain-torchscript": "no_metadata",
    "torch-save-pickle": "no_metadata",
    "raw-pickle": "not_archive",
    "future-version": "newer_version",
    "not-atomplug-metadata": "not_atomplug",
    "metadata-lies-about-outputs": "capabilities_disagree",
    "metadata-lies-about-units": "capabilities_disagree",
    "directory": "directory",
    "metadata-not-json": "unreadable_metadata",
    "metadata-nested-too-deeply": "unreadable_metadata",
    "metadata-too-large": "metadata_too_large",
    "metadata-not-an-object": "not_atomplug",
    "no-format-version": "no_version",
    "format-version-zero": "no_version",
    "format-version-true": "no_version",
    "metadata-lacks-capabilities": "lacks",
    "metadata-lacks-metadata": "lacks",
    "capabilities-lack-atomic-types": "malformed",
    "output-lacks-unit": "malformed",
    "foreign-code-with-metadata": "no_entry_point",
}


def unpickled_marker(directory) -> str:
    """The directory a hostile pickle creates when it is unpickled (it must never exist)."""
    return os.path.join(str(directory), "UNPICKLED")


class _CreatesMarkerWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def rewrite_metadata(source: str, destination: str, change) -> None:
    """A copy of a model archive whose metadata JSON went through `change(header)` (a forgery)."""
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(destination, "w") as archive_out:
        for item in archive_in.infolist():
            data = archive_in.read(item.filename)
            if item.filename.endswith("/extra/" + METADATA_FILE):
                header = json.loads(data)
                change(header)
                data = json.dumps(header).encode()
            archive_out.writestr(item, data)


def replace_metadata(source: str, destination: str, data: bytes) -> None:
    """A copy of a model archive whose metadata entry holds `data` (deflated, so that a huge
    entry makes a small file)."""
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(destination, "w") as archive_out:
        for item in archive_in.infolist():
            if item.filename.endswith("/extra/" + METADATA_FILE):
                archive_out.writestr(item.filename, data, compress_type=zipfile.ZIP_DEFLATED)
            else:
                archive_out.writestr(item, archive_in.read(item.filename))


def _add_metadata_of(good_model: str, destination: str) -> None:
    """Add the metadata of `good_model` to the TorchScript archive `destination` (code not ours)."""
    with zipfile.ZipFile(good_model) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_FILE)]
        data = archive.read(name)
    with zipfile.ZipFile(destination, "a") as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{prefix}/extra/{METADATA_FILE}", data)


def _drop(*keys: str):
    def change(header: Dict) -> None:
        container = header
        for key in keys[:-1]:
            container = container[key]
        del container[keys[-1]]

    return change


# kind -> how its metadata is forged from a good model's (see write_model_file)
_FORGED_METADATA = {
    "future-version": lambda header: header.update(format_version=99),
    "not-atomplug-metadata": lambda header: header.update(format="somebody-else"),
    "no-format-version": _drop("format_version"),
    "format-version-zero": lambda header: header.update(format_version=0),
    "format-version-true": lambda header: header.update(format_version=True),
    "metadata-lacks-capabilities": _drop("capabilities"),
    "metadata-lacks-metadata": lambda header: header.update(metadata=["not", "an", "object"]),
    "capabilities-lack-atomic-types": _drop("capabilities", "atomic_types"),
    "output-lacks-unit": _drop("capabilities", "outputs", "energy", "unit"),
}
# kind -> the raw bytes of its metadata entry
_RAW_METADATA = {
    "metadata-not-json": lambda: b'{"format": "atomplug", "format_version": ',
    "metadata-nested-too-deeply": lambda: b"[" * 1000 + b"]" * 1000,
    "metadata-too-large": lambda: b" " * ((16 << 20) + 1),
    "metadata-not-an-object": lambda: b'["atomplug", 1]',
}


def _claim_more_outputs(header: Dict) -> None:
    header["capabilities"]["outputs"]["energy_uncertainty"] = {
        "quantity": "energy",
        "unit": "eV",
        "per_atom": False,
        "properties": [],
    }


def _claim_other_units(header: Dict) -> None:
    header["capabilities"]["outputs"]["energy"]["unit"] = "kcal/mol"


def write_model_file(kind: str, directory, good_model: str) -> str:
    """Write the `kind` of bad model file into `directory` (from the exported `good_model` where
    needed) and return its path."""
    directory = str(directory)
    path = os.path.join(directory, f"{kind}.pt")
    marker = unpickled_marker(directory)
    if kind == "missing":
        return path
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":
        with open(good_model, "rb") as handle:
            data = handle.read()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
    elif kind == "text":
        with open(path, "w") as handle:
            handle.write("pair_style lj/cut 8.5\n")
    elif kind == "plain-torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), path)
    elif kind == "torch-save-pickle":
        torch.save({"weights": torch.zeros(3), "payload": _CreatesMarkerWhenUnpickled(marker)}, path)
    elif kind == "raw-pickle":
        with open(path, "wb") as handle:
            pickle.dump(_CreatesMarkerWhenUnpickled(marker), handle)
    elif kind == "directory":
        os.mkdir(path)
    elif kind in _FORGED_METADATA:
        rewrite_metadata(good_model, path, _FORGED_METADATA[kind])
    elif kind in _RAW_METADATA:
        replace_metadata(good_model, path, _RAW_METADATA[kind]())
    elif kind == "foreign-code-with-metadata":
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), path)
        _add_metadata_of(good_model, path)
    elif kind == "metadata-lies-about-outputs":
        rewrite_metadata(good_model, path, _claim_more_outputs)
    elif kind == "metadata-lies-about-units":
        rewrite_metadata(good_model, path, _claim_other_units)
    else:
        raise KeyError(kind)
    return path


# ---- a model that fails at run time ----------------------------------------------------------------

FRAGILE_LIMIT = 8  # atoms; export's own check runs the model on 6
FRAGILE_MESSAGE = "fragile model: more than 8 atoms, which it was not trained for"


class Fragile(torch.nn.Module):
    """A per-atom pair repulsion that fails on structures of more than `limit` atoms: with
    mode "raise" by raising RuntimeError inside TorchScript, with mode "nan" by returning NaN
    (no two atoms close: the NaN is the model's own)."""

    def __init__(self, limit: int, mode: str):
        super().__init__()
        self.limit = limit
        self.mode = mode

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(4.0, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        energies: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(NeighborListOptions(4.0, False, True))
            pair_energy = torch.exp(-neighbors.distances())
            energy = torch.zeros(len(system), dtype=system.positions.dtype)
            energy = energy.index_add(0, neighbors.pairs[:, 0], 0.5 * pair_energy)
            energy = energy.index_add(0, neighbors.pairs[:, 1], 0.5 * pair_energy)
            if len(system) > self.limit:
                if self.mode == "raise":
                    raise RuntimeError(
                        "fragile model: more than " + str(self.limit) + " atoms, which it was not trained for"
                    )
                energy = energy + torch.sqrt(-system.types.to(energy.dtype))  # NaN for every atom
            energies.append(energy if outputs["energy"].per_atom else energy.sum().reshape(1))
        return {"energy": torch.cat(energies).reshape(-1, 1)}


def export_fragile(path: str, mode: str = "raise") -> str:
    """Export `Fragile` (types H, O, Ar; per-atom energy in eV) with atomplug's export."""
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[1, 8, 18],
        interaction_range=4.0,
        length_unit="Angstrom",
        dtype="float64",
    )
    export(Fragile(FRAGILE_LIMIT, mode), path, capabilities, ModelMetadata(name=f"fragile ({mode})"))
    return path
