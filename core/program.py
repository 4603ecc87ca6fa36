"""The model's computation as one `torch.export` program, captured at export (issue 18).

The program is the entry point's physics for one structure, with everything an engine chooses per
call passed in as tensors (unit factors, the selected atoms as weights), so that one program serves
every engine: positions, types, cell, pbc, weights, length factor, output factors and the neighbor
lists -> every declared output, the weighted sums of per-atom outputs, and the gradient output's
forces, virial and per-atom virial, traced by autograd into the graph. What varies per call only in
size (atoms, pairs) stays dynamic; `atomplug compile` turns the program into native code
(AOTInductor) on the target machine.

The program never raises: inputs the TorchScript entry point would refuse (NaN positions, unknown
types, pairs out of range, a flat periodic cell) are replaced by harmless values and flagged in its
`inputs_ok` output, and `finite` flags each result. A caller that sees a flag runs the same call
through the TorchScript entry point, which gives the error (or, for a flagged result the engine did
not ask for, the answer): the errors are written once, there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .contract import ModelCapabilities, ModelOutput
from .virial import atomic_virial_from_pairs, pair_vectors, strained

PROGRAM_FILE = "atomplug-program.pt2"  # the torch.export program, an extra file of the archive
# The smallest numbers of atoms and pairs the program takes: torch.export specialises sizes 0 and 1,
# so smaller calls (a single atom, a list with one pair) run through the TorchScript entry point.
MIN_ATOMS = 2
MIN_PAIRS = 2
NON_CONSERVATIVE = ("non_conservative_forces", "non_conservative_stress")


@dataclasses.dataclass
class ProgramLayout:
    """What the program takes and returns, stored in the archive's metadata (`program`).

    inputs: positions [N,3] f64 (engine length unit), types [N] i32, cell [3,3] f64, pbc [3] bool,
      weights [N] f64 (1 for selected atoms, 0 for the others), length_factor [] f64 (engine length
      -> model length), output_factors [n_outputs] f64 (model unit -> engine unit of each output),
      then pairs [P_k,2] i64 and shifts [P_k,3] i32 of every neighbor list k.
    outputs: inputs_ok [] bool, finite [n_outputs + 3] bool (each output, then forces, virial,
      per-atom virial), each output's values ([N,P] per atom or [1,P]), for each per-atom output
      its weighted sum [1,P], then (with a gradient output) forces [N,3], virial [3,3], per-atom
      virial [N,3,3] (forces [P,N,3] and virial [P,3,3] for P > 1 properties, no per-atom virial).
    """

    outputs: List[str]
    per_atom: List[bool]
    widths: List[int]
    gradient: str  # the output differentiated for forces and virial, "" for none
    n_lists: int

    @property
    def gradient_width(self) -> int:
        return self.widths[self.outputs.index(self.gradient)] if self.gradient else 0

    @property
    def atomic_virial(self) -> bool:
        return self.gradient_width == 1

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict) -> "ProgramLayout":
        return cls(
            [str(n) for n in data["outputs"]],
            [bool(p) for p in data["per_atom"]],
            [int(w) for w in data["widths"]],
            str(data["gradient"]),
            int(data["n_lists"]),
        )

    def index(self, name: str) -> int:
        """Position of output `name`'s values among the program's outputs."""
        return 2 + self.outputs.index(name)

    def sum_index(self, name: str) -> int:
        """Position of per-atom output `name`'s weighted sum among the program's outputs."""
        summed = [n for n, p in zip(self.outputs, self.per_atom) if p]
        return 2 + len(self.outputs) + summed.index(name)

    @property
    def derivative_index(self) -> int:
        """Position of the forces among the program's outputs (virial and per-atom virial follow)."""
        return 2 + len(self.outputs) + sum(self.per_atom)


def program_layout(capabilities: ModelCapabilities, n_lists: int) -> ProgramLayout:
    """The layout for a model: every declared output, forces and virial of its energy, or of its
    only output for a model without energy (a collective variable)."""
    # non-conservative forces and stress serve the engines' non_conservative mode, which compiled
    # programs do not run (see CompiledProgram): left out, they cost nothing per call
    names = [n for n in capabilities.outputs if n not in NON_CONSERVATIVE]
    gradient = ""
    if "energy" in capabilities.outputs:
        gradient = "energy"
    elif len(capabilities.outputs) == 1:
        gradient = names[0]
    return ProgramLayout(
        names,
        [bool(capabilities.outputs[n].per_atom) for n in names],
        [len(capabilities.outputs[n].properties) or 1 for n in names],
        gradient,
        n_lists,
    )


def capturing() -> bool:
    """Whether the code runs under the program's capture (symbolic tensors: data-dependent checks
    must not look at values; the program flags bad inputs instead). False in TorchScript."""
    if torch.jit.is_scripting():
        return False
    return torch._guards.detect_fake_mode() is not None


def periodic_cell_ok(cell: Tensor, pbc: Tensor) -> Tensor:
    """entry_checks.check_periodic_cells as a tensor flag: every periodic vector non-zero, and
    the periodic vectors spanning a non-zero area (2) or volume (3) relative to their norms."""
    norms = torch.linalg.vector_norm(cell, dim=1)
    zero_periodic = (pbc & (norms == 0)).any()
    unit = cell / torch.where(norms == 0, torch.ones_like(norms), norms).unsqueeze(1)
    # |det| as a triple product: AOTInductor has no native kernel for linalg.det
    crosses = torch.linalg.cross(unit[[0, 0, 1]], unit[[1, 2, 2]])
    volume = torch.abs((crosses[0] * unit[2]).sum())
    crossed = torch.linalg.vector_norm(crosses, dim=1)
    pair_periodic = torch.stack([pbc[0] & pbc[1], pbc[0] & pbc[2], pbc[1] & pbc[2]])
    n_periodic = pbc.to(torch.int64).sum()
    area = (crossed * pair_periodic.to(crossed.dtype)).sum()
    flat = torch.where(
        n_periodic == 3, volume <= 1e-10, torch.where(n_periodic == 2, area <= 1e-10, torch.zeros_like(zero_periodic))
    )
    return ~(zero_periodic | flat)


def program_function(entry, layout: ProgramLayout):
    """The program, as a Python function of flat tensors, over an eager (not scripted)
    AtomisticModel `entry` whose module is the author's eager module."""
    known = entry._known_types
    dtype = entry._dtype_probe.dtype
    model_outputs = {
        name: ModelOutput(
            entry._output_quantities[i], entry._output_units[i], layout.per_atom[i], entry._output_properties[i]
        )
        for i, name in enumerate(layout.outputs)
    }

    def run(positions, types, cell, pbc, weights, length_factor, output_factors, *lists):
        n_atoms = positions.shape[0]
        pairs = list(lists[0::2])
        shifts = list(lists[1::2])
        finite_positions = torch.isfinite(positions)
        known_atoms = (types.unsqueeze(1) == known.unsqueeze(0)).any(dim=1)
        inputs_ok = finite_positions.all() & torch.isfinite(cell).all() & known_atoms.all()
        inputs_ok = inputs_ok & periodic_cell_ok(torch.where(torch.isfinite(cell), cell, 0.0), pbc)
        for index in range(len(pairs)):
            inputs_ok = inputs_ok & ((pairs[index] >= 0) & (pairs[index] < n_atoms)).all()
            pairs[index] = pairs[index].clamp(0, n_atoms - 1)
        types = torch.where(known_atoms, types, known[0])
        engine_positions = torch.where(finite_positions, positions, 0.0).clone().requires_grad_(True)
        factor = length_factor.to(dtype)
        model_positions = engine_positions.to(dtype) * factor
        model_cells = (torch.where(torch.isfinite(cell), cell, 0.0).to(dtype) * factor).unsqueeze(0)
        strain = torch.zeros((1, 3, 3), dtype=dtype, device=positions.device, requires_grad=layout.gradient != "")
        system_of_atom = torch.zeros_like(types, dtype=torch.int64)
        model_positions, model_cells = strained(model_positions, model_cells, strain, system_of_atom, 1)
        vectors = [
            pair_vectors(model_positions, model_cells, pairs[k], shifts[k], system_of_atom, 1)
            for k in range(len(pairs))
        ]
        sizes = torch.full((1,), 1, dtype=torch.int64) * n_atoms
        systems = entry._build_systems(
            {}, types, model_positions, model_cells, pbc.unsqueeze(0), sizes, pairs, shifts, vectors, system_of_atom, 1
        )
        raw = entry.module(systems, model_outputs, None)
        values: List[Tensor] = []
        sums: List[Tensor] = []
        target: Optional[Tensor] = None
        for index, name in enumerate(layout.outputs):
            value = raw[name] * output_factors[index].to(raw[name].dtype)
            if layout.per_atom[index]:
                summed = (value * weights.to(value.dtype).unsqueeze(1)).sum(dim=0, keepdim=True)
                sums.append(summed.to(torch.float64))
                if name == layout.gradient:
                    target = summed
            elif name == layout.gradient:
                target = value
            values.append(value.to(torch.float64))
        derivatives: List[Tensor] = []
        if target is not None:
            derivatives = _derivatives(layout, target, engine_positions, strain, pairs, vectors, n_atoms)
        finite = [torch.isfinite(v).all() for v in values]
        for derivative in derivatives:
            finite.append(torch.isfinite(derivative).all())
        while len(finite) < len(values) + 3:
            finite.append(torch.ones((), dtype=torch.bool))
        return (inputs_ok, torch.stack(finite), *values, *sums, *derivatives)

    return run


def _derivatives(layout, target, positions, strain, pairs, vectors, n_atoms) -> List[Tensor]:
    """forces, virial (and per-atom virial for a single-valued target), as the entry point's
    _add_derivatives computes them."""
    width = target.shape[1]
    wrt = [positions, strain] + (vectors if width == 1 else [])
    forces, virials = [], []
    gradients: Tuple = ()
    for k in range(width):
        gradients = torch.autograd.grad(
            [target[:, k].sum()], wrt, retain_graph=k + 1 < width, allow_unused=True, materialize_grads=True
        )
        forces.append(-gradients[0].to(torch.float64))
        virials.append(-gradients[1][0].to(torch.float64))
    if width == 1:
        atomic = atomic_virial_from_pairs(n_atoms, pairs, vectors, list(gradients[2:]), torch.float64)
        return [forces[0], virials[0], atomic]
    return [torch.stack(forces), torch.stack(virials)]


def example_inputs(entry, capabilities: ModelCapabilities, layout: ProgramLayout) -> List[Tensor]:
    """Flat inputs on a small periodic cluster of every known type, for the capture: sizes chosen
    so that no two dynamic sizes coincide (or equal a fixed one), which would tie them."""
    from .neighbors import compute_pairs

    generator = torch.Generator().manual_seed(20261206)
    n_atoms = 11
    types = [capabilities.atomic_types[i % len(capabilities.atomic_types)] for i in range(n_atoms)]
    requests = [(c, f) for c, f in zip(entry._cutoffs, entry._full_lists)]
    reach = max([c for c, _ in requests] + [1.0])
    box = 1.05 * reach
    positions = torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) * box
    cell = torch.eye(3, dtype=torch.float64) * box
    pbc = torch.tensor([True, True, True])
    lists: List[Tensor] = []
    for cutoff, full in requests:
        p, s = compute_pairs(positions.numpy(), cell.numpy(), pbc.numpy(), cutoff, full)
        lists += [torch.from_numpy(p), torch.from_numpy(s)]
    return [
        positions,
        torch.tensor(types, dtype=torch.int32),
        cell,
        pbc,
        torch.ones(n_atoms, dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64),
        torch.ones(len(layout.outputs), dtype=torch.float64),
        *lists,
    ]


def load_program(data: bytes):
    """torch.export.load of an archive's program, with nothing unpickled: torch.export's reader
    falls back to `pickle` and `torch.load(weights_only=False)` for payloads it stores that way
    (export() never writes them: plain tensors are raw bytes), so during the load those are made to
    refuse, and a program that needs them is refused (DESIGN: no pickle from a user file)."""
    import pickle

    from torch.export.pt2_archive import _package

    real_load, real_pickle_load = torch.load, torch._C._pickle_load_obj

    def weights_only_load(*arguments, **options):
        options["weights_only"] = True
        return real_load(*arguments, **options)

    def refuse(*_arguments, **_options):
        raise pickle.UnpicklingError("a pickled object in the program")

    class NoPickle:
        loads = staticmethod(refuse)

    saved_pickle = _package.pickle
    torch.load, torch._C._pickle_load_obj, _package.pickle = weights_only_load, refuse, NoPickle
    try:
        with warnings_quiet():  # torch's own deprecation notices about its serialisation
            return torch.export.load(io.BytesIO(data))
    except pickle.UnpicklingError:
        raise ValueError(
            "the archive's program holds pickled objects, which atomplug never writes nor loads: export the model again"
        ) from None
    finally:
        torch.load, torch._C._pickle_load_obj, _package.pickle = real_load, real_pickle_load, saved_pickle


def capture_program(entry, capabilities: ModelCapabilities) -> Tuple[Optional[bytes], Optional[ProgramLayout], str]:
    """(serialized torch.export program, its layout, "") or (None, None, why it cannot be captured)."""
    if capabilities.inputs:
        return None, None, "models with requested inputs (charges, masses, ...) are not captured yet"
    if capabilities.ghost_exchange:
        return None, None, "models with a ghost exchange are not captured (LAMMPS' communication runs in TorchScript)"
    if isinstance(entry.module, torch.jit.ScriptModule):
        return None, None, "the module was given already scripted: pass the eager module to export() to capture it"
    layout = program_layout(capabilities, len(entry._cutoffs))
    try:
        program = _export(entry, capabilities, layout)
    except Exception as error:  # torch.export's own text says what stopped it
        return None, None, f"torch.export could not capture it: {_first_lines(error)}"
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), layout, ""


def _first_lines(error: Exception) -> str:
    """The error's first line and the line of model (or atomplug) code that raised it: torch's
    own message names only its internals."""
    import traceback

    text = next((line.strip() for line in str(error).strip().splitlines() if line.strip()), "")
    torch_folder = os.path.dirname(torch.__file__)
    culprit = ""
    for frame in traceback.extract_tb(error.__traceback__):
        if not frame.filename.startswith(torch_folder) and not frame.filename.endswith(
            os.path.join("core", "program.py")
        ):
            culprit = f" at {os.path.basename(frame.filename)}:{frame.lineno} `{(frame.line or '').strip()}`"
    return f"{type(error).__name__}: {text[:300]}{culprit}"


def _export(entry, capabilities: ModelCapabilities, layout: ProgramLayout):
    from torch.export import Dim
    from torch.fx.experimental import _config as shape_config
    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = example_inputs(entry, capabilities, layout)
    function = program_function(entry, layout)
    with _no_duck_shapes(shape_config), torch.no_grad(), warnings_quiet():
        with torch.enable_grad():
            graph = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
    atoms = Dim("n_atoms", min=MIN_ATOMS)
    dynamic = [{0: atoms}, {0: atoms}, None, None, {0: atoms}, None, None]
    for k in range(layout.n_lists):
        pairs = Dim(f"n_pairs_{k}", min=MIN_PAIRS)
        dynamic += [{0: pairs}, {0: pairs}]
    with warnings_quiet():
        return torch.export.export(graph, tuple(inputs), dynamic_shapes=tuple(dynamic), strict=False)


@contextlib.contextmanager
def _no_duck_shapes(config):
    """Equal sizes stay distinct symbols during the trace (no 'duck sizing')."""
    previous = config.use_duck_shape
    config.use_duck_shape = False
    try:
        yield
    finally:
        config.use_duck_shape = previous


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
