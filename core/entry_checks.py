"""The entry point's checks of what an engine passes in and of what a model returns, as
TorchScript functions compiled into every archive, so that every engine gives the same messages."""

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor


def check_inputs(
    positions: Tensor,
    types: Tensor,
    cells: Tensor,
    pbcs: Tensor,
    system_sizes: Tensor,
    neighbor_pairs: List[Tensor],
    neighbor_shifts: List[Tensor],
    known_types: Tensor,
    atomic_types: List[int],
    n_lists: int,
    allow_empty: bool = False,
):
    """Shapes, finiteness, cells, atom types and neighbor-list tensors of the engine's input, each
    refused with a message that names the fix. `allow_empty`: a system may have no atoms (a rank
    of a domain decomposition, which takes part in the ghost exchanges all the same)."""
    n_atoms = positions.shape[0]
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [n_atoms, 3], got {positions.shape}")
    if not positions.is_floating_point():
        raise ValueError("positions must be floating point")
    if types.shape != (n_atoms,):
        raise ValueError(f"types must have shape [n_atoms] = [{n_atoms}], got {types.shape}")
    n_systems = system_sizes.shape[0]
    if n_systems == 0:
        raise ValueError("no systems to evaluate")
    if cells.shape != (n_systems, 3, 3) or pbcs.shape != (n_systems, 3):
        raise ValueError(
            f"cells must be [n_systems, 3, 3] and pbcs [n_systems, 3] for {n_systems} systems, "
            f"got {cells.shape} and {pbcs.shape}"
        )
    if int(system_sizes.sum()) != n_atoms:
        raise ValueError(f"system_sizes add up to {int(system_sizes.sum())} atoms, but there are {n_atoms}")
    if bool((system_sizes < 0).any()) or (not allow_empty and bool((system_sizes == 0).any())):
        raise ValueError("a system has no atoms: every structure needs at least one atom")
    finite = torch.isfinite(positions).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"positions of {bad.shape[0]} atom(s) are NaN or infinite (first: atom {int(bad[0])}): "
            "the structure is broken, check the engine's input or a diverging simulation (time step too large?)"
        )
    if not bool(torch.isfinite(cells).all()):
        raise ValueError("the cell contains NaN or infinite values: check the engine's cell (box) input")
    if bool(pbcs.any()):
        check_periodic_cells(cells, pbcs.to(torch.bool))
    known = torch.isin(types.to(torch.int32), known_types)
    if not bool(known.all()):
        unknown: List[int] = torch.unique(types[~known]).to(torch.int64).tolist()
        raise ValueError(
            f"atom types {unknown} are unknown to this model, which knows {atomic_types}: "
            "remove those atoms or use a model trained for them"
        )
    if len(neighbor_pairs) != n_lists or len(neighbor_shifts) != n_lists:
        raise ValueError(
            f"the model needs {n_lists} neighbor list(s), got {len(neighbor_pairs)} pair and "
            f"{len(neighbor_shifts)} shift tensors"
        )
    for index in range(len(neighbor_pairs)):
        pairs = neighbor_pairs[index]
        shifts = neighbor_shifts[index]
        if pairs.dim() != 2 or pairs.shape[1] != 2 or shifts.shape != (pairs.shape[0], 3):
            raise ValueError(
                f"neighbor list {index}: pairs must be [P, 2] and shifts [P, 3], got {pairs.shape} and {shifts.shape}"
            )
        if pairs.shape[0] > 0:
            if int(pairs.min()) < 0 or int(pairs.max()) >= n_atoms:
                raise ValueError(f"neighbor list {index} has atom indices outside [0, {n_atoms})")


def check_periodic_cells(cells: Tensor, pbcs: Tensor):
    """Every periodic direction needs a non-zero cell vector, and the periodic vectors together
    a non-zero volume (area): a flat cell has no images to speak of. Plain float arithmetic:
    ~6 us, where tensor operations on 3x3 matrices cost ~50 us per call."""
    values: List[List[List[float]]] = cells.to(torch.float64).tolist()
    flags: List[List[bool]] = pbcs.tolist()
    n_systems = len(values)
    for system in range(n_systems):
        vectors: List[List[float]] = []
        norms: List[float] = []
        for axis in range(3):
            if flags[system][axis]:
                vector = values[system][axis]
                # scaled to its largest component (area and volume are compared relative to the
                # norms, so nothing changes) so that the products below cannot overflow for huge cells
                largest = max(abs(vector[0]), max(abs(vector[1]), abs(vector[2])))
                if largest > 0.0:
                    vector = [vector[0] / largest, vector[1] / largest, vector[2] / largest]
                norm = math.sqrt(vector[0] * vector[0] + vector[1] * vector[1] + vector[2] * vector[2])
                if norm == 0.0:
                    raise ValueError(
                        f"{structure_prefix(system, n_systems)}cell vector {axis} is zero but the "
                        "system is periodic along it: set a cell vector or make that direction non-periodic"
                    )
                vectors.append(vector)
                norms.append(norm)
        measure = 1.0  # the area or volume the periodic vectors span, relative to `scale`
        scale = 1.0
        if len(vectors) == 2:
            a = vectors[0]
            b = vectors[1]
            cross = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
            measure = math.sqrt(cross[0] * cross[0] + cross[1] * cross[1] + cross[2] * cross[2])
            scale = norms[0] * norms[1]
        elif len(vectors) == 3:
            a = vectors[0]
            b = vectors[1]
            c = vectors[2]
            measure = abs(
                a[0] * (b[1] * c[2] - b[2] * c[1])
                - a[1] * (b[0] * c[2] - b[2] * c[0])
                + a[2] * (b[0] * c[1] - b[1] * c[0])
            )
            scale = norms[0] * norms[1] * norms[2]
        if measure <= 1e-10 * scale:
            raise ValueError(
                f"{structure_prefix(system, n_systems)}the periodic cell vectors are linearly dependent (the "
                "cell is flat): give a cell with a non-zero volume in its periodic directions"
            )


def non_finite_output(final: Dict[str, Tensor], device: torch.device) -> Optional[str]:
    """The name of the first output with NaN or infinite values, None when all are finite: NaN
    or infinite results are never physics, the entry point stops rather than feed them to an MD
    run (with `non_finite_message`). One sum per output and one synchronisation (~20 us); NaN and
    infinities survive a sum."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for value in final.values():
        total = total + value.sum()
    if bool(torch.isfinite(total)):
        return None
    for key, value in final.items():
        if not bool(torch.isfinite(value).all()):
            return key
    raise ValueError(
        "the model returned values too large to add up (above 1e308): the structure is outside what "
        "the model can handle, or the model is broken; check the structure"
    )


def non_finite_message(
    name: str,
    values: Tensor,
    positions: Tensor,
    pbcs: Tensor,
    neighbor_pairs: List[Tensor],
    vectors: List[Tensor],
    system_sizes: Tensor,
    system_of_atom: Tensor,
    selected: Optional[Tensor],
    length_factor: float,
    length_unit: str,
    cutoffs: List[float],
    pressure_outputs: List[str],
) -> str:
    """Name the atoms behind NaN or infinite results: two atoms (almost) on top of each other
    are the usual cause, otherwise the atoms whose values are not finite."""
    n_atoms = positions.shape[0]
    n_systems = system_sizes.shape[0]
    offsets = torch.cumsum(system_sizes, 0) - system_sizes
    text = f"the model returned NaN or infinite values in '{name}'"
    if name in pressure_outputs:
        if not bool(pbcs.to(torch.bool).all()):
            return (
                f"{text}, a pressure, which has no meaning without a cell periodic in all three "
                "directions: ask for it on 3D periodic structures only"
            )
    closest = -1.0
    first = -1
    second = -1
    relative = 1.0
    for index in range(len(vectors)):
        if vectors[index].shape[0] > 0:
            distances = torch.linalg.vector_norm(vectors[index].detach().to(torch.float64), dim=1)
            k = int(torch.argmin(distances))
            distance = float(distances[k])
            if first < 0 or distance < closest:
                closest = distance
                first = int(neighbor_pairs[index][k, 0])
                second = int(neighbor_pairs[index][k, 1])
                relative = distance / cutoffs[index]
    if first >= 0 and relative < 0.01:
        system = int(system_of_atom[first])
        offset = int(offsets[system])
        prefix = structure_prefix(system, n_systems)
        gap = number_text(closest / length_factor)
        position = position_text(positions, first)
        return (
            f"{text}: {prefix}atoms {first - offset} and {second - offset} are only {gap} {length_unit} apart "
            f"(overlapping atoms, at {position} {length_unit}): remove the duplicate atom or move the atoms apart"
        )
    fix = (
        ": the model cannot handle this structure (atoms too close, or far from its training data?) "
        "or is broken; check the structure"
    )
    atoms = torch.zeros(0, dtype=torch.int64)
    if name == "forces":  # [N, 3], or [P, N, 3] for several properties
        atoms = torch.nonzero((~torch.isfinite(values.reshape(-1, n_atoms, 3))).any(dim=2).any(dim=0)).flatten()
    elif name == "atomic_virial":
        atoms = torch.nonzero((~torch.isfinite(values.reshape(n_atoms, 9))).any(dim=1)).flatten()
    elif name.endswith("/per_atom"):
        rows = torch.nonzero((~torch.isfinite(values)).any(dim=1)).flatten()
        atoms = rows if selected is None else selected.index_select(0, rows)
    if atoms.shape[0] > 0:
        atom = int(atoms[0])
        system = int(system_of_atom[atom])
        prefix = structure_prefix(system, n_systems)
        position = position_text(positions, atom)
        return (
            f"{text} for {atoms.shape[0]} atom(s), first {prefix}atom {atom - int(offsets[system])} "
            f"at {position} {length_unit}{fix}"
        )
    # a per-structure value ([S, p], or the virial [S, 3, 3] / [P, S, 3, 3])
    if name == "virial":
        bad = (~torch.isfinite(values.reshape(-1, n_systems, 9))).any(dim=2).any(dim=0)
    else:
        bad = (~torch.isfinite(values.reshape(n_systems, -1))).any(dim=1)
    systems = torch.nonzero(bad).flatten()
    if n_systems > 1 and systems.shape[0] > 0:
        return f"{text} for structure {int(systems[0])}{fix}"
    return f"{text}{fix}"


def structure_prefix(system: int, n_systems: int) -> str:
    """'structure 3: ' in a batch of several structures, nothing for a single one."""
    if n_systems > 1:
        return f"structure {system}: "
    return ""


def position_text(positions: Tensor, atom: int) -> str:
    values: List[float] = positions[atom].detach().to(torch.float64).tolist()
    texts = [number_text(value) for value in values]
    return f"({', '.join(texts)})"


def number_text(value: float) -> str:
    """A number for an error message: 4 decimals (TorchScript's str() prints all 17 digits)."""
    if not math.isfinite(value) or abs(value) >= 1e12 or (value != 0.0 and abs(value) < 1e-4):
        return str(value)
    scaled = int(round(abs(value) * 10000.0))
    sign = "-" if value < 0.0 and scaled > 0 else ""
    text = f"{sign}{scaled // 10000}"
    fraction = scaled % 10000
    if fraction > 0:
        digits = f"000{fraction}"[-4:].rstrip("0")
        text = f"{text}.{digits}"
    return text
