"""`export()`: script an author's module, wrap it in the entry point, check it, write one archive."""

import io
import json
import os
import sys
from typing import List, Optional, Tuple

import torch

from .archive import FORMAT_NAME, FORMAT_VERSION, METADATA_FILE
from .contract import PER_ATOM_SUFFIX, ModelCapabilities, ModelMetadata
from .entry_point import AtomisticModel, _requested_neighbor_lists, _split_request, with_requested_inputs
from .errors import describe_model_error
from .files import OutputError, write_atomically
from .program import PROGRAM_FILE, capture_program


def export(
    module: torch.nn.Module,
    path: str,
    capabilities: ModelCapabilities,
    metadata: Optional[ModelMetadata] = None,
) -> None:
    """Script `module`, wrap it with its capabilities and metadata, check it, save one archive.

    The file is written to a temporary name and renamed at the end, so a failed export never
    leaves a half-written model behind.
    """
    metadata = metadata if metadata is not None else ModelMetadata()
    capabilities = with_requested_inputs(module, capabilities)
    _check_parameter_dtype(module, capabilities.dtype)
    try:
        scripted_module = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    except Exception as error:  # TorchScript's own error text says where
        raise ValueError(f"TorchScript could not compile the model module: {error}") from error
    requests = _requested_neighbor_lists(module)
    scripted = torch.jit.script(AtomisticModel(scripted_module, capabilities, metadata, requests))
    scripted.eval()
    _smoke_test(scripted, capabilities)
    # the same computation as one torch.export program, for `atomplug compile` (core.program)
    program, layout, reason = capture_program(AtomisticModel(module, capabilities, metadata, requests), capabilities)
    if program is None:
        print(f"atomplug export: {path}: TorchScript only, no compiled program ({reason})", file=sys.stderr)

    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "capabilities": capabilities.to_dict(),
        "metadata": metadata.to_dict(),
        "torch_version": torch.__version__,
        "program": {"captured": True, "layout": layout.to_dict()} if program else {"captured": False, "reason": reason},
    }
    extra_files = {METADATA_FILE: json.dumps(header, sort_keys=True)}
    if program is not None:
        extra_files[PROGRAM_FILE] = program
    # Serialized in memory first: torch aborts the whole process (an exception thrown in a
    # destructor) when its own file writer hits a full disk; Python's writes raise OSError instead.
    archive = io.BytesIO()
    torch.jit.save(scripted, archive, _extra_files=extra_files)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the directory {directory!r} for the model ({error.strerror or error}): choose a "
            "directory you may write to",
            error.errno,
        ) from error
    write_atomically(path, lambda handle: handle.write(archive.getbuffer()), tag="export", what="the model")


def _check_parameter_dtype(module: torch.nn.Module, dtype: str) -> None:
    expected = torch.float64 if dtype == "float64" else torch.float32
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and tensor.dtype != expected:
            raise ValueError(
                f"parameter/buffer {name!r} is {tensor.dtype} but the capabilities declare dtype "
                f"{dtype!r}: call module.to(torch.{dtype}) before export, or declare dtype="
                f"{str(tensor.dtype).replace('torch.', '')!r}"
            )


def _smoke_test_lists(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, requests) -> Tuple[List, List]:
    """The pairs and shifts of every requested neighbor list, as the entry point takes them."""
    from .neighbors import compute_pairs

    pairs, shifts = [], []
    for cutoff, full_list, _strict in requests:
        p, s = compute_pairs(positions.numpy(), cell.numpy(), pbc.numpy(), cutoff, full_list)
        pairs.append(torch.from_numpy(p))
        shifts.append(torch.from_numpy(s))
    return pairs, shifts


def _smoke_test_inputs(capabilities: ModelCapabilities, n_atoms: int, generator: torch.Generator):
    """Plausible values of every requested input (amu, Angstrom/fs, e) for the export check."""
    values = {
        "masses": 1.0 + 30.0 * torch.rand((n_atoms, 1), generator=generator, dtype=torch.float64),
        "velocities": 0.01 * (torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) - 0.5),
        "charges": torch.rand((n_atoms, 1), generator=generator, dtype=torch.float64) - 0.5,
        "total_charge": torch.zeros((1, 1), dtype=torch.float64),
        "spin_multiplicity": torch.ones((1, 1), dtype=torch.float64),
    }
    return {name: values[name] for name in capabilities.inputs}


def _smoke_test(scripted: torch.jit.ScriptModule, capabilities: ModelCapabilities) -> None:
    """Run the entry point once on a small cluster with every declared output (and forces and
    virial when there is an energy), so that a model whose outputs do not match its
    declaration fails at export rather than in a user's simulation."""
    generator = torch.Generator().manual_seed(20261124)
    types = list(capabilities.atomic_types)
    while len(types) < 4:
        types = types + list(capabilities.atomic_types)
    n_atoms = len(types)
    requests = scripted.neighbor_requests(capabilities.length_unit)
    box = max([r[0] for r in requests] + [1.0])
    positions = (torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) * box).contiguous()
    cell = torch.zeros((3, 3), dtype=torch.float64)
    pbc = torch.zeros(3, dtype=torch.bool)
    pairs, shifts = _smoke_test_lists(positions, cell, pbc, requests)
    outputs = []
    for name, output in capabilities.outputs.items():
        outputs.append(name)
        if output.per_atom:
            outputs.append(name + PER_ATOM_SUFFIX)
    # a pressure (stress) is only defined in a 3D periodic cell: checked in one, below
    pressures = [name for name in outputs if capabilities.outputs[_split_request(name)[0]].quantity == "pressure"]
    outputs = [name for name in outputs if name not in pressures]
    has_energy = "energy" in capabilities.outputs
    inputs = _smoke_test_inputs(capabilities, n_atoms, generator)
    quantity_units = {"mass": "amu", "velocity": "Angstrom/fs", "charge": "e"}

    def run(cell, pbc, pairs, shifts, requested: List[str], compute_forces: bool, compute_virial: bool) -> None:
        scripted(
            positions,
            torch.tensor(types, dtype=torch.int32),
            cell.unsqueeze(0),
            pbc.unsqueeze(0),
            torch.tensor([n_atoms]),
            pairs,
            shifts,
            requested,
            None,
            "energy",
            compute_forces,
            compute_virial,
            False,
            capabilities.length_unit,
            "eV",
            False,
            inputs,
            quantity_units,
        )

    try:
        run(cell, pbc, pairs, shifts, outputs, has_energy, has_energy)
        # energies per structure only (what ASE and i-PI ask): a per-atom-capable model must honour that too
        per_structure = [
            name for name, output in capabilities.outputs.items() if output.per_atom and output.quantity == "energy"
        ]
        if per_structure:
            run(cell, pbc, pairs, shifts, per_structure, has_energy, False)
        if pressures:
            periodic_cell = torch.eye(3, dtype=torch.float64) * (1.5 * box)
            periodic = torch.ones(3, dtype=torch.bool)
            pairs, shifts = _smoke_test_lists(positions, periodic_cell, periodic, requests)
            run(periodic_cell, periodic, pairs, shifts, pressures, False, False)
    except Exception as error:
        raise ValueError(
            f"the model does not match its declared capabilities: {describe_model_error(error)}"
        ) from error
