"""One i-PI force request -> one call of the core: cell and units at i-PI's boundary, nothing else.

i-PI works in atomic units (Bohr, Hartree) and sends its cell `h` with the lattice vectors as
COLUMNS; atomplug's cell has them as rows, so the cell is `h.T` here and the virial goes back
transposed. The model itself runs through `ModelRunner` with `length_unit="Bohr"` and
`energy_unit="Hartree"`, so every unit conversion happens inside the exported archive.

Everything here is used by the `atomplug-ipi` socket client, by the `i-pi-py_driver -m custom`
PES file and by i-PI's in-process `<ffdirect>` forcefield: the three forms compute identical
numbers.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from atomplug.core.contract import PER_ATOM_SUFFIX
from atomplug.core.runner import ATOMS_INPUTS, ModelRunner, Structure, describe_types, inputs_from_atoms
from atomplug.core.units import engine_quantity_units

ENGINE_LENGTH = "Bohr"
ENGINE_ENERGY = "Hartree"
DEFAULT_SKIN_ANGSTROM = 0.5

# i-PI's own xyz files announce their cell in the comment line; ASE reads them as molecules.
_IPI_CELL_COMMENT = re.compile(r"CELL\s*[\(\[\{]\s*(abcABC|H|GENH)\s*[\)\]\}]", re.IGNORECASE)

Result = Tuple[float, np.ndarray, np.ndarray, str]


class DriverError(Exception):
    """A user-facing problem (bad model, structure, option): printed as one line."""


def read_template(path: str):
    """An `ase.Atoms` with the atomic numbers and periodicity of a structure file (any format
    ASE reads).

    An i-PI-style xyz file (comment line `# CELL(abcABC): ...`) is periodic, as i-PI treats it;
    an extxyz file says itself; a plain xyz file is a molecule (the cell i-PI sends is ignored).
    """
    import ase.io

    if not os.path.exists(path):
        raise DriverError(f"structure file {path!r} does not exist: give the file i-PI starts from")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as error:  # ASE raises many kinds for unreadable files
        raise DriverError(f"could not read the structure file {path!r} with ASE: {error}") from None
    if not atoms.pbc.any() and _has_ipi_cell_comment(path):
        atoms.pbc = True
    if len(atoms) == 0:
        raise DriverError(f"the structure file {path!r} holds no atoms: give the file i-PI starts from")
    return atoms


def _has_ipi_cell_comment(path: str) -> bool:
    try:
        with open(path, "r", errors="replace") as handle:
            handle.readline()
            return bool(_IPI_CELL_COMMENT.search(handle.readline()))
    except OSError:
        return False


def parse_extras(extras: Union[None, str, Sequence[str]]) -> List[str]:
    """'a,b' or 'a;b' or ['a', 'b'] -> ['a', 'b'] (';' because i-PI splits -o on commas)."""
    if extras is None:
        return []
    if isinstance(extras, str):
        extras = re.split(r"[,;\s]+", extras)
    names = []
    for name in extras:
        name = str(name).strip()
        if name and name not in names:
            names.append(name)
    return names


# i-PI's socket protocol sends the cell and positions only: the other inputs come from the
# structure file (ASE units: amu, e) and the command line, once for the whole run.
VELOCITIES_REFUSED = (
    "the model requests the atoms' velocities, which the i-PI socket protocol does not send (i-PI "
    "sends only the cell and the positions): this model cannot run in i-PI; use it from ASE or LAMMPS"
)


def model_inputs(
    names: Sequence[str],
    template,
    structure: str,
    charge: Optional[float],
    spin: Optional[float],
    flags: Tuple[str, str] = ("--charge", "--spin"),
) -> dict:
    """The model's requested inputs for the whole run, in i-PI's input units (amu, e): masses
    and per-atom charges from the structure file, total charge and spin multiplicity from
    --charge / --spin (or charge= / spin= in an extxyz comment line). Anything missing is an
    error naming where to give it."""
    for name in names:
        if name == "velocities":
            raise DriverError(VELOCITIES_REFUSED)
        if name not in ATOMS_INPUTS:
            raise DriverError(f"the model requests the input {name!r}, which atomplug-ipi does not know")
    atoms = template.copy()
    for name, key, flag, value in (
        ("total_charge", "charge", flags[0], charge),
        ("spin_multiplicity", "spin", flags[1], spin),
    ):
        if name not in names:
            continue
        if value is None and key in template.info:
            value = template.info[key]
        what = "total charge (e)" if key == "charge" else "spin multiplicity 2S+1 (1 for a singlet)"
        if value is None:
            raise DriverError(
                f"the model needs the {what} and none was given: give {flag} (or {key}=... in the extxyz "
                f"comment line of {structure!r})"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DriverError(f"{flag} {value!r} is not a number: give the {what}") from None
        if not np.isfinite(number):
            raise DriverError(f"{flag} {value!r} is not a finite number: give the {what}")
        atoms.info[key] = number
    if "charges" in names and not template.has("initial_charges"):
        raise DriverError(
            f"the model needs per-atom charges and the structure file {structure!r} has none: give an "
            "extxyz file with an 'initial_charges' column (ASE: atoms.set_initial_charges(q); "
            "ase.io.write('init.extxyz', atoms))"
        )
    return inputs_from_atoms(atoms, names)  # read the ASE way, as every Python engine does


def _describe_input(name: str, value: np.ndarray) -> str:
    if name in ("total_charge", "spin_multiplicity"):
        return f"{name} {float(value[0]):g}"
    if name == "charges":
        return f"charges from the structure file (total {float(np.sum(value)):g} e)"
    return f"{name} from the structure file"


class IPIEvaluator:
    """Evaluate an atomplug model on the structures i-PI sends.

    `__call__(h, positions)` takes i-PI's cell (lattice vectors as columns, Bohr) and positions
    ([n, 3] or flat, Bohr) and returns (energy [Hartree], forces [n, 3] [Hartree/Bohr], virial
    [3, 3] in i-PI's convention [Hartree], extras JSON string). `batch(hs, positions)` does the
    same for several structures in one model call.
    """

    def __init__(
        self,
        model: str,
        structure: str,
        *,
        device: str = "cpu",
        extras: Union[None, str, Sequence[str]] = None,
        non_conservative: bool = False,
        skin: float = DEFAULT_SKIN_ANGSTROM,
        name: Optional[str] = None,
        charge: Optional[float] = None,
        spin: Optional[float] = None,
        variant: str = "",
        input_flags: Tuple[str, str] = ("--charge", "--spin"),
        neighbor_backend: Optional[str] = None,
    ):
        from atomplug.core.archive import load_model

        try:
            loaded = load_model(os.fspath(model), device)
        except (FileNotFoundError, ValueError) as error:
            raise DriverError(str(error)) from None
        self.model = loaded
        self.template = read_template(os.fspath(structure))
        self.types = np.asarray(self.template.numbers, dtype=np.int32)
        self.pbc = np.array(self.template.pbc, dtype=bool)
        self.n_atoms = int(self.types.shape[0])
        capabilities = loaded.capabilities
        outputs = capabilities.outputs
        if "energy" not in outputs and "energy" not in capabilities.variants():
            raise DriverError(
                f"the model declares no 'energy' output (it has: {', '.join(outputs)}); i-PI needs an energy and forces"
            )
        try:
            skin_bohr = float(skin) * loaded.unit_conversion("Angstrom", ENGINE_LENGTH)
            self.runner = ModelRunner(
                loaded,
                length_unit=ENGINE_LENGTH,
                energy_unit=ENGINE_ENERGY,
                skin=skin_bohr,
                device=device,
                quantity_units=engine_quantity_units("ipi"),
                neighbor_backend=neighbor_backend,
            )
        except ValueError as error:
            raise DriverError(str(error)) from None
        self.variant = str(variant or "")
        try:
            self.energy = self.runner.output_name("energy", self.variant)
        except ValueError as error:
            raise DriverError(f"{'--variant' if input_flags[0] == '--charge' else 'variant'}: {error}") from None
        self.inputs = model_inputs(
            self.runner.input_names, self.template, os.fspath(structure), charge, spin, input_flags
        )
        try:
            self.runner.check_types(Structure(self.types, np.zeros((self.n_atoms, 3)), np.zeros((3, 3)), self.pbc))
        except ValueError as error:
            raise DriverError(f"structure file {structure!r}: {error}") from None

        self.non_conservative = bool(non_conservative)
        self.outputs: List[str] = [self.energy]
        if self.non_conservative and self.variant:
            for direct in ("non_conservative_forces", "non_conservative_stress"):
                if direct in outputs and self.runner.output_name(direct, self.variant) != direct:
                    raise DriverError(
                        f"--non-conservative with --variant {self.variant}: the model has {direct}/{self.variant} "
                        f"but direct forces are taken from the plain {direct}: run without --non-conservative"
                    )
        if self.non_conservative:
            if "non_conservative_forces" not in outputs:
                raise DriverError(
                    "--non-conservative needs a model with a 'non_conservative_forces' output; this model "
                    f"declares {', '.join(outputs)}: run without --non-conservative to use forces from "
                    "the energy gradient"
                )
            if not outputs["non_conservative_forces"].per_atom:
                raise DriverError("the model declares 'non_conservative_forces' per structure; it must be per atom")
            # the virial: -sigma V from the model's stress, or for an isolated structure sum r (x) f
            # (the entry point's rule, AtomisticModel._virial_source)
            if self.pbc.all() and "non_conservative_stress" not in outputs:
                raise DriverError(
                    "--non-conservative on a periodic structure needs a 'non_conservative_stress' output "
                    "for the virial, and this model has none: run without --non-conservative"
                )

        self.extras = parse_extras(extras)
        self._extra_outputs = {}  # the name asked -> the model's output under the variant
        for request in self.extras:
            try:
                self._extra_outputs[request] = self.runner.check_output_request(
                    self.runner.output_name(request, self.variant)
                )
            except ValueError as error:
                raise DriverError(f"--extras: {error}") from None
        self.requests = list(self.outputs) + [
            name for name in dict.fromkeys(self._extra_outputs.values()) if name not in self.outputs
        ]
        self.name = name
        # one Verlet-skin cache per trajectory (bead) this client serves; i-PI wraps atoms back into
        # the box, which the caches do not count as moves
        # (on the model's device when the lists are: ModelRunner's neighbor_backend)
        self.runner.cache = self.runner.trajectory_caches(max_caches=min(16, 200_000 // max(self.n_atoms, 1)))
        self._zero_cell = np.zeros((3, 3))
        self._periodic = bool(self.pbc.any())
        self._single = Structure(self.types, np.zeros((self.n_atoms, 3)), self._zero_cell, self.pbc, self.inputs)
        self.reset_statistics()

    def reset_statistics(self) -> None:
        self.n_structures = 0
        self.n_calls = 0
        self.model_seconds = 0.0  # wall time in the core's entry point (with neighbor lists)
        self.model_cpu_seconds = 0.0  # CPU time of this thread in there

    def warm_up(self, calls: int = 3) -> float:
        """Run the model a few times on the template structure: the first calls build TorchScript's
        execution plans and vesin's buffers, which would otherwise slow down i-PI's first steps (the
        forward is optimised later, from call UNOPTIMIZED_CALLS + 1: core/archive.py). Returns the seconds spent;
        a template that cannot be evaluated (e.g. an i-PI file whose cell ASE does not read) is
        simply skipped."""
        from ase.units import Bohr

        start = time.perf_counter()
        positions = self.template.positions / Bohr
        structures = [Structure(self.types, positions, self.template.cell.array / Bohr, self.pbc, self.inputs)]
        # an i-PI xyz file's cell is in its comment line, which ASE does not read: warm up the
        # same computation on the isolated structure
        structures.append(Structure(self.types, positions, np.zeros((3, 3)), np.zeros(3, dtype=bool), self.inputs))
        for structure in structures:
            try:
                for _ in range(calls):
                    self.runner.run(
                        [structure],
                        self.requests,
                        forces=True,
                        virial=True,
                        non_conservative=self.non_conservative,
                        gradient_output=self.energy,
                        use_cache=False,
                    )
                break
            except ValueError:
                continue
        self.runner.cache.reset()
        self.reset_statistics()
        return time.perf_counter() - start

    # ---- evaluation --------------------------------------------------------------------------

    def _positions(self, positions: np.ndarray) -> np.ndarray:
        positions = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
        if positions.shape[0] != self.n_atoms:
            raise DriverError(
                f"i-PI sent {positions.shape[0]} atoms but the structure file has {self.n_atoms}: start "
                "atomplug-ipi with the structure i-PI simulates"
            )
        return positions

    def _cell(self, h: np.ndarray) -> np.ndarray:
        """atomplug's cell (lattice vectors as rows) from i-PI's h (lattice vectors as columns)."""
        if not self._periodic:
            return self._zero_cell
        return np.asarray(h, dtype=np.float64).reshape(3, 3).T.copy()  # C-ordered

    def batch(self, hs: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> List[Result]:
        cells = [self._cell(h) for h in hs]
        coordinates = [self._positions(q) for q in positions]
        single = len(coordinates) == 1
        if single:
            # one Structure reused for single requests (MD): its fields are already the right
            # arrays, so the per-step validation of a new Structure is skipped
            structure = self._single
            structure.positions = coordinates[0]
            structure.cell = cells[0]
            structures = [structure]
        else:
            structures = [Structure(self.types, q, c, self.pbc, self.inputs) for q, c in zip(coordinates, cells)]
        start = time.perf_counter()
        start_cpu = time.thread_time()
        try:
            raw = self.runner.run(
                structures,
                self.requests,
                forces=True,
                virial=True,
                non_conservative=self.non_conservative,
                gradient_output=self.energy,
                use_cache=single,
            )
        except ValueError as error:
            raise DriverError(f"the model failed on the structure i-PI sent: {error}") from None
        self.model_seconds += time.perf_counter() - start
        self.model_cpu_seconds += time.thread_time() - start_cpu
        self.n_calls += 1
        self.n_structures += len(structures)

        if single:  # MD: as below, without the loop
            virial = raw["virial"][0].T.copy()
            return [(float(raw[self.energy][0, 0]), raw["forces"], virial, self._extras(raw, 0, 0, self.n_atoms))]
        energies = raw[self.energy][:, 0]
        all_forces = raw["forces"]
        results: List[Result] = []
        for index in range(len(structures)):
            begin, end = index * self.n_atoms, (index + 1) * self.n_atoms
            forces = all_forces[begin:end]
            virial = raw["virial"][index].T.copy()  # i-PI's convention: the transpose, C-ordered
            results.append((float(energies[index]), forces, virial, self._extras(raw, index, begin, end)))
        return results

    def _extras(self, raw, index: int, begin: int, end: int) -> str:
        if not self.extras and self.name is None:
            return ""
        data = {}
        if self.name is not None:
            data["client"] = self.name
        for request in self.extras:
            values = raw[self._extra_outputs[request]]
            values = values[begin:end] if request.endswith(PER_ATOM_SUFFIX) else values[index]
            if values.shape[-1] == 1:
                values = values[..., 0]
            data[request] = values.tolist()
        return json.dumps(data)

    def __call__(self, h: np.ndarray, positions: np.ndarray) -> Result:
        return self.batch([h], [positions])[0]

    def describe(self) -> str:
        """Two or three lines for the log: the model, its citation, the structure."""
        lines = [self.model.metadata.citation_text()]
        periodic = "periodic" if self.pbc.all() else ("isolated" if not self.pbc.any() else f"pbc={self.pbc.tolist()}")
        mode = "non-conservative forces" if self.non_conservative else "forces and virial from the energy"
        lines.append(f"structure: {self.n_atoms} atoms of {describe_types(np.unique(self.types))}, {periodic}; {mode}")
        if self.variant:
            lines.append(f"variant: {self.variant} (energy from {self.energy})")
        if self.inputs:
            lines.append("inputs: " + ", ".join(_describe_input(name, value) for name, value in self.inputs.items()))
        if self.extras:
            lines.append(f"extras: {', '.join(self.extras)}")
        return "\n".join(lines)
