"""The core's bad-input battery: every case is one line naming the problem and the fix.

Model files go through `load_model` (what every Python engine calls); structures through
`ModelRunner` (ASE, i-PI, the command line) and, for the checks the C++ engines rely on, through
the exported entry point itself (what LAMMPS and PLUMED call); the `atomplug` command exits 2
with one line and writes nothing. One-atom systems and atoms far outside a periodic cell are
not errors: they must give the right numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from bad_files import (
    FRAGILE_MESSAGE,
    MODEL_FILE_FIX,
    MODEL_FILE_KINDS,
    MODEL_FILE_PROBLEMS,
    export_fragile,
    unpickled_marker,
    write_model_file,
)
from structures import AR_LATTICE, displaced_triclinic_argon
from torch import Tensor

from atomplug.cli import main
from atomplug.core import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    System,
    export,
    load_model,
)
from atomplug.core.runner import Structure
from atomplug.core.units import engine_quantity_units


def one_line(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message


# ---- model files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS + ["directory"])
def test_model_file_is_refused(kind, lj_model_path, tmp_path):
    if kind == "directory":
        path, problem = str(tmp_path), r"is a directory, not an exported atomplug model file: give the \.pt file"
    else:
        path, problem = write_model_file(kind, tmp_path, lj_model_path), MODEL_FILE_PROBLEMS[kind]
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        load_model(path)
    message = str(caught.value)
    one_line(message)
    assert re.search(problem, message), message
    assert re.search(MODEL_FILE_FIX, message) or kind == "directory", message
    assert not os.path.exists(unpickled_marker(tmp_path)), "a pickle in a model file was unpickled"


# ---- structures -----------------------------------------------------------------------------------


def argon_pair(distance: float = 3.8) -> Atoms:
    return Atoms("Ar2", positions=[[1.0, 1.0, 1.0], [1.0 + distance, 1.0, 1.0]])


def periodic_argon(cell) -> Atoms:
    atoms = argon_pair()
    atoms.cell = cell
    atoms.pbc = True
    return atoms


def with_position(atoms: Atoms, atom: int, value: float) -> Atoms:
    atoms = atoms.copy()
    atoms.positions[atom, 1] = value
    return atoms


def with_cell_entry(atoms: Atoms, value: float) -> Atoms:
    atoms = atoms.copy()
    cell = atoms.cell.array.copy()
    cell[1, 1] = value
    atoms.set_cell(cell)
    return atoms


STRUCTURES = {
    # case: (structure, problem, fix)
    "nan-position": (
        lambda: with_position(argon_pair(), 1, np.nan),
        r"NaN or infinite",
        r"check the engine's input|fix the structure",
    ),
    "infinite-position": (
        lambda: with_position(argon_pair(), 0, np.inf),
        r"NaN or infinite",
        r"check the engine's input|fix the structure",
    ),
    "unknown-element": (
        lambda: Atoms("ArCl", positions=[[0, 0, 0], [0, 0, 3.0]]),
        r"Cl \(17\) unknown to this model, which knows Ar \(18\)",
        r"remove those atoms or use a model trained for them",
    ),
    "empty": (lambda: Atoms(), r"has no atoms", r"needs at least one atom"),
    "zero-cell-periodic": (
        lambda: periodic_argon(np.zeros((3, 3))),
        r"cell vector 0 is zero but the system is periodic along it",
        r"set a cell vector or make that direction non-periodic",
    ),
    "flat-cell": (
        lambda: periodic_argon([[10, 0, 0], [20, 0, 0], [0, 0, 10]]),
        r"linearly dependent \(the cell is flat\)",
        r"give a cell with a non-zero volume",
    ),
    "nan-cell": (
        lambda: with_cell_entry(periodic_argon(np.eye(3) * 10), np.nan),
        r"cell contains NaN or infinite values",
        r"check the structure's cell|check the engine's cell",
    ),
    "overlapping-atoms": (
        lambda: argon_pair(0.0),
        r"NaN or infinite values in 'energy': atoms 0 and 1 are only 0 Angstrom apart \(overlapping atoms, at \(1, 1, 1\) Angstrom\)",
        r"remove the duplicate atom or move the atoms apart",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_bad_structure(case, lj_model_path):
    make, problem, fix = STRUCTURES[case]
    with pytest.raises(ValueError) as caught:
        ModelRunner(lj_model_path).run([make()], ["energy"], forces=True, virial=True)
    message = str(caught.value)
    one_line(message)
    assert re.search(problem, message) and re.search(fix, message), message


def call_entry_point(model_path: str, atoms: Atoms, pairs: Optional[np.ndarray] = None):
    """The exported entry point as LAMMPS and PLUMED call it: tensors only, the engine's pairs."""
    module = load_model(model_path).module
    if pairs is None:
        pairs = np.array([[0, 1]])
    return module(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers, dtype=torch.int32),
        torch.tensor(atoms.cell.array)[None],
        torch.tensor(atoms.pbc)[None],
        torch.tensor([len(atoms)]),
        [torch.tensor(pairs, dtype=torch.int64)],
        [torch.zeros((len(pairs), 3), dtype=torch.int32)],
        ["energy"],
        None,
        "energy",
        True,
        True,
        False,
        "Angstrom",
        "eV",
    )


@pytest.mark.parametrize(
    "case", ["nan-position", "infinite-position", "zero-cell-periodic", "flat-cell", "nan-cell", "overlapping-atoms"]
)
def test_bad_structure_at_the_entry_point(case, lj_model_path):
    """The checks C++ engines rely on live in the archive itself: same problem, same fix."""
    make, problem, fix = STRUCTURES[case]
    with pytest.raises(torch.jit.Error) as caught:
        call_entry_point(lj_model_path, make())
    message = str(caught.value).strip().splitlines()[-1]
    assert message.startswith("builtins.ValueError: ")
    assert re.search(problem, message) and re.search(fix, message), message


def test_overlapping_atoms_are_named_in_a_batch(lj_model_path):
    frames = [displaced_triclinic_argon(repeat=(2, 2, 2), seed=seed) for seed in range(3)]
    frames[2].positions[5] = frames[2].positions[3]
    with pytest.raises(ValueError, match=r"structure 2: atoms 3 and 5 are only 0 Angstrom apart"):
        ModelRunner(lj_model_path).run(frames, ["energy"], forces=True)


def test_non_finite_model_output_names_the_atoms(tmp_path):
    """No two atoms close, yet the model returns NaN: the atoms are named, never a silent NaN."""
    path = export_fragile(str(tmp_path / "nan.pt"), mode="nan")
    water_cluster = Atoms("OH2" * 3, positions=[[3.0 * k, 0.0, 0.0] for k in range(9)])
    with pytest.raises(
        ValueError,
        match=r"NaN or infinite values in 'energy/per_atom' for 9 atom\(s\), first atom 0 at "
        r"\(0, 0, 0\) Angstrom: the model cannot handle this structure",
    ):
        ModelRunner(path).run([water_cluster], ["energy/per_atom", "energy"])


def test_one_atom_has_zero_energy(lj_model_path):
    result = ModelRunner(lj_model_path).run(
        [Atoms("Ar", positions=[[1.0, 2.0, 3.0]])],
        ["energy", "energy/per_atom"],
        forces=True,
        virial=True,
    )
    assert result["energy"][0, 0] == 0.0 and result["energy/per_atom"][0, 0] == 0.0
    assert np.all(result["forces"] == 0.0) and np.all(result["virial"] == 0.0)


def test_atoms_far_outside_a_periodic_cell_are_wrapped(lj_model_path):
    """Periodic images are the same atoms: the numbers equal those of the wrapped structure (up
    to the rounding of positions thousands of cells away)."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    far = atoms.copy()
    shifts = np.random.default_rng(3).integers(-300, 300, size=(len(atoms), 3))
    far.positions += shifts @ atoms.cell.array
    wrapped = far.copy()
    wrapped.wrap()
    runner = ModelRunner(lj_model_path)
    got = runner.run([far], ["energy"], forces=True, virial=True, use_cache=False)
    expected = runner.run([wrapped], ["energy"], forces=True, virial=True, use_cache=False)
    assert got["energy"][0, 0] == pytest.approx(expected["energy"][0, 0], rel=1e-12)
    np.testing.assert_allclose(got["forces"], expected["forces"], rtol=0, atol=1e-10 * np.abs(expected["forces"]).max())
    np.testing.assert_allclose(got["virial"], expected["virial"], rtol=1e-10)


# ---- options --------------------------------------------------------------------------------------


class PairModel(torch.nn.Module):
    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        return {"energy": torch.stack([s.positions.sum() for s in systems]).reshape(-1, 1)}


def export_pair_model(path, cutoff=3.0, interaction_range=3.0, unit="eV", length_unit="Angstrom"):
    export(
        PairModel(cutoff),
        str(path),
        ModelCapabilities(
            outputs={"energy": ModelOutput("energy", unit, per_atom=False)},
            atomic_types=[18],
            interaction_range=interaction_range,
            length_unit=length_unit,
        ),
        ModelMetadata(name="pair"),
    )


OPTIONS = {
    # case: (action, problem, fix)
    "unknown-length-unit": (
        lambda m, d: ModelRunner(m, length_unit="furlong"),
        r"engine units \(length 'furlong', energy 'eV'\): unknown unit 'furlong'",
        r"give a length unit as length_unit",
    ),
    "energy-unit-that-is-a-length": (
        lambda m, d: ModelRunner(m, energy_unit="Angstrom"),
        r"cannot convert 'eV' \(energy\) to 'Angstrom' \(length\)",
        r"give a length unit as length_unit and an energy unit as energy_unit",
    ),
    "unknown-output": (
        lambda m, d: ModelRunner(m).run([argon_pair()], ["dipole"]),
        r"no output 'dipole'",
        r"it declares: energy.*ask for one of those",
    ),
    "per-atom-of-per-structure-output": (
        lambda m, d: ModelRunner(m).run([argon_pair()], ["non_conservative_stress/per_atom"]),
        r"cannot compute 'non_conservative_stress' per atom \(it declares it per structure only\)",
        r"ask for 'non_conservative_stress' without '/per_atom'",
    ),
    "bad-device-name": (
        lambda m, d: ModelRunner(m, device="tpu"),
        r"'tpu' is not a torch device",
        r"use 'cpu', 'cuda' or 'cuda:N'",
    ),
    "negative-cutoff-in-export": (
        lambda m, d: export_pair_model(d / "m.pt", cutoff=-1.0),
        r"cutoff must be a positive finite number, got -1",
        r"fix the model's requested_neighbor_lists",
    ),
    "negative-interaction-range": (
        lambda m, d: export_pair_model(d / "m.pt", interaction_range=-2.0),
        r"interaction_range must be a finite number >= 0, got -2",
        r"declare the largest distance at which atoms interact",
    ),
    "cutoff-beyond-interaction-range": (
        lambda m, d: export_pair_model(d / "m.pt", cutoff=5.0),
        r"cutoff 5.0 larger than its declared interaction_range 3.0",
        r"raise interaction_range",
    ),
    "unknown-unit-in-export": (
        lambda m, d: export_pair_model(d / "m.pt", unit="furlong"),
        r"unknown unit 'furlong'",
        r"declare the energy unit of the values the model returns, e.g. 'eV'",
    ),
    "length-declared-as-energy": (
        lambda m, d: export_pair_model(d / "m.pt", unit="Angstrom"),
        r"unit 'Angstrom' is not an energy unit \(it is length\)",
        r"declare the energy unit of the values the model returns, e.g. 'eV'",
    ),
}
if not torch.cuda.is_available():
    OPTIONS["cuda-without-gpu"] = (
        lambda m, d: ModelRunner(m, device="cuda"),
        r"device 'cuda' asked, but torch .* sees no CUDA device",
        r"use device 'cpu'",
    )


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_option(case, lj_model_path, tmp_path):
    action, problem, fix = OPTIONS[case]
    with pytest.raises(Exception) as caught:
        action(lj_model_path, tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError), repr(caught.value)
    one_line(message)
    assert re.search(problem, message) and re.search(fix, message), message
    assert os.listdir(tmp_path) == [], "a failed export wrote something"


# ---- the `atomplug` command -----------------------------------------------------------------------


def atomplug(*args):
    """The installed console script, as a user runs it (exit status, stderr)."""
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    assert script, "the 'atomplug' console script is installed next to the interpreter"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120)


class Run:
    def __init__(self, returncode: int, stderr: str):
        self.returncode = returncode
        self.stderr = stderr


def atomplug_in_process(capsys, *args) -> Run:
    """The same command line in this process (no interpreter start: fast); a traceback would
    escape as an exception and fail the test."""
    capsys.readouterr()
    status = main(list(args))
    return Run(status, capsys.readouterr().err)


def assert_command_error(run, problem: str, fix: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomplug: error: "), run.stderr
    assert re.search(problem, lines[0]) and re.search(fix, lines[0]), lines[0]


@pytest.mark.parametrize("kind", ["empty", "torch-save-pickle", "future-version", "metadata-lies-about-units"])
def test_command_refuses_model_file(kind, lj_model_path, tmp_path, capsys):
    path = write_model_file(kind, tmp_path, lj_model_path)
    assert_command_error(atomplug_in_process(capsys, "info", path), MODEL_FILE_PROBLEMS[kind], MODEL_FILE_FIX)
    assert not os.path.exists(unpickled_marker(tmp_path))


def write_frames(path, frames):
    """Frames as extxyz, or text as it is."""
    if isinstance(frames, str):
        with open(path, "w") as handle:
            handle.write(frames)
    else:
        ase.io.write(str(path), frames, format="extxyz")
    return str(path)


EVAL_CASES = {
    # case: (frames, extra arguments, problem, fix)
    "overlapping-atoms-in-a-batch": (
        lambda: [bulk("Ar", "fcc", a=AR_LATTICE, cubic=True), argon_pair(0.0), argon_pair()],
        [],
        r"structure 1: the model returned NaN or infinite values in 'energy': atoms 0 and 1",
        r"remove the duplicate atom",
    ),
    "empty-structure": (
        lambda: [argon_pair(), Atoms()],
        [],
        r"structure 1: the structure has no atoms",
        r"needs at least one atom",
    ),
    "unreadable-structure-file": (
        lambda: "3\nnot an xyz file\n",
        [],
        r"could not read '.*in\.xyz' with ASE",
        r"check the file",
    ),
    "bad-device": (lambda: [argon_pair()], ["--device", "tpu"], r"'tpu' is not a torch device", r"use 'cpu'"),
    "output-directory-missing": (
        lambda: [argon_pair()],
        ["-o", "no/such/dir/out.xyz"],
        r"does not exist",
        r"create .* first",
    ),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_error_exits_2_and_writes_nothing(case, lj_model_path, tmp_path, capsys):
    make, extra, problem, fix = EVAL_CASES[case]
    source = write_frames(tmp_path / "in.xyz", make())
    arguments = ["eval", lj_model_path, source, "-o", str(tmp_path / "out.xyz"), "-q"]
    if "-o" in extra:
        arguments = arguments[:4] + [str(tmp_path / extra[1])] + ["-q"]
    else:
        arguments += extra
    # one case as a user runs it (the exit status of the real process), the others in process
    run = atomplug(*arguments) if case == "overlapping-atoms-in-a-batch" else atomplug_in_process(capsys, *arguments)
    assert_command_error(run, problem, fix)
    assert sorted(os.listdir(tmp_path)) == ["in.xyz"], "no output and no temporary file"


def test_eval_of_one_atom_gives_zero(lj_model_path, tmp_path, capsys):
    source = write_frames(tmp_path / "in.xyz", [Atoms("Ar", positions=[[0.5, 0.5, 0.5]])])
    run = atomplug_in_process(capsys, "eval", lj_model_path, source, "-o", str(tmp_path / "out.xyz"), "-q")
    assert run.returncode == 0, run.stderr
    (result,) = ase.io.read(tmp_path / "out.xyz", ":")
    assert result.get_potential_energy() == 0.0 and np.all(result.get_forces() == 0.0)


def test_export_file_has_ordinary_permissions(tmp_path):
    """A temporary file renamed into place keeps its creation mode: 0o666 minus the umask, like
    any file the user creates (not mkstemp's owner-only 0o600)."""
    mask = os.umask(0o022)
    try:
        export_pair_model(tmp_path / "m.pt")
    finally:
        os.umask(mask)
    assert os.stat(tmp_path / "m.pt").st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["m.pt"]


def test_fragile_model_message_is_the_models(tmp_path):
    """The reference for the fault tests: the model's own RuntimeError, said to be the model's."""
    path = export_fragile(str(tmp_path / "fragile.pt"))
    with pytest.raises(ValueError) as caught:
        ModelRunner(path).run([Atoms("H9", positions=[[2.0 * k, 0, 0] for k in range(9)])], ["energy"])
    message = str(caught.value)
    one_line(message)
    assert message.startswith(f"the model's own code raised RuntimeError: {FRAGILE_MESSAGE} (the model refuses")


# ---- model inputs and variants (issue 15) ---------------------------------------------------------


class InputModel(torch.nn.Module):
    """Requests `requested` (name -> ModelOutput) and returns energy = sum of the input `read`."""

    def __init__(self, requested, read: str = "charges"):
        super().__init__()
        self.requested = requested
        self.read = read

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return []

    def requested_inputs(self):
        return self.requested

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        return {
            "energy": torch.stack([s.get_input(self.read).sum() + 0.0 * s.positions.sum() for s in systems]).reshape(
                -1, 1
            )
        }


def export_input_model(path, requested, read="charges", inputs=None, outputs=None):
    capabilities = ModelCapabilities(
        outputs=outputs or {"energy": ModelOutput("energy", "eV")},
        atomic_types=[1, 8],
        interaction_range=0.0,
        inputs=inputs or {},
    )
    export(InputModel(requested, read), str(path), capabilities, ModelMetadata(name="inputs"))
    return str(path)


CHARGES = {"charges": ModelOutput("charge", "e", True)}
EXPORTS = {
    # case: (keyword arguments of export_input_model, problem, fix)
    "unknown-input-name": (
        dict(requested={"charge": ModelOutput("charge", "e", True)}),
        r"requested input 'charge' is unknown: models may request masses, velocities, charges, total_charge, "
        r"spin_multiplicity",
        r"fix the model's requested_inputs\(\)",
    ),
    "wrong-input-quantity": (
        dict(requested={"charges": ModelOutput("energy", "eV", True)}),
        r"requested input 'charges' has quantity 'charge', not 'energy'",
        r"declare ModelOutput\(quantity='charge', unit=\.\.\.\)",
    ),
    "per-structure-input-declared-per-atom": (
        dict(requested={"total_charge": ModelOutput("charge", "e", True)}, read="total_charge"),
        r"requested input 'total_charge' is per structure",
        r"declare it with per_atom=False",
    ),
    "per-atom-input-declared-per-structure": (
        dict(requested={"charges": ModelOutput("charge", "e", False)}),
        r"requested input 'charges' is per atom",
        r"declare it with per_atom=True",
    ),
    "charges-in-eV": (
        dict(requested={"charges": ModelOutput("charge", "eV", True)}),
        r"requested input 'charges': unit 'eV' is not a charge unit \(it is energy\)",
        r"declare the charge unit of the values the model wants, e\.g\. 'e'",
    ),
    "velocities-in-Angstrom": (
        dict(requested={"velocities": ModelOutput("velocity", "Angstrom", True)}, read="velocities"),
        r"requested input 'velocities': unit 'Angstrom' is not a velocity unit \(it is length\)",
        r"e\.g\. 'Angstrom/fs'",
    ),
    "input-properties": (
        dict(requested={"velocities": ModelOutput("velocity", "Angstrom/fs", True, ["a"])}, read="velocities"),
        r"requested input 'velocities' has the properties \['x', 'y', 'z'\], not \['a'\]",
        r"leave properties out",
    ),
    "not-a-model-output": (
        dict(requested={"charges": ("charge", "e", True)}),
        r"requested_inputs\(\) must map names to ModelOutput objects, got tuple for 'charges'",
        r"ModelOutput",
    ),
    "capabilities-disagree-with-requested-inputs": (
        dict(requested=CHARGES, inputs={"charges": ModelOutput("charge", "C", True)}),
        r"ModelCapabilities\.inputs \{'charges': \('charge', 'C'\)\} and the module's requested_inputs\(\) "
        r"\{'charges': \('charge', 'e'\)\} disagree",
        r"declare the inputs in one place",
    ),
    "input-not-requested": (
        dict(requested=CHARGES, read="masses"),
        r"the model did not request the input 'masses' \(it requested: charges\)",
        r"add it to the model's requested_inputs\(\) and export it again",
    ),
    "empty-variant": (
        dict(requested={}, read="charges", outputs={"energy/": ModelOutput("energy", "eV")}),
        r"output name 'energy/': an empty variant after '/'",
        r"name variants '<output>/<variant>', e\.g\. 'energy/ccsdt'",
    ),
    "two-variants": (
        dict(requested={}, outputs={"energy/a/b": ModelOutput("energy", "eV")}),
        r"output name 'energy/a/b': more than one '/'",
        r"name variants '<output>/<variant>'",
    ),
    "per-atom-as-variant": (
        dict(requested={}, outputs={"energy/per_atom": ModelOutput("energy", "eV")}),
        r"output name 'energy/per_atom': 'per_atom' is not a variant name",
        r"name variants '<output>/<variant>'",
    ),
    "variant-with-a-space": (
        dict(requested={}, outputs={"energy/a b": ModelOutput("energy", "eV")}),
        r"output name 'energy/a b': characters other than letters, digits and _ - \. \+",
        r"name variants '<output>/<variant>'",
    ),
    "variant-without-a-name": (
        dict(requested={}, outputs={"/a": ModelOutput("energy", "eV")}),
        r"output name '/a' is neither standard \(energy, .*\) nor namespaced",
        r"call it '<vendor>::<name>' \(variants: '<output>/<variant>'\)",
    ),
    "energy-variant-of-another-quantity": (
        dict(requested={}, outputs={"energy/x": ModelOutput("length", "Angstrom")}),
        r"output 'energy/x' must have quantity 'energy', not 'length'",
        r"",
    ),
}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_bad_inputs_and_variants_at_export(case, tmp_path):
    arguments, problem, fix = EXPORTS[case]
    with pytest.raises(ValueError) as caught:
        export_input_model(tmp_path / "m.pt", **arguments)
    message = str(caught.value)
    one_line(message)
    assert re.search(problem, message) and re.search(fix, message), message
    assert os.listdir(tmp_path) == [], "a failed export wrote something"


ALL_INPUTS = {
    "masses": ModelOutput("mass", "amu", True),
    "velocities": ModelOutput("velocity", "Angstrom/fs", True),
    "charges": ModelOutput("charge", "e", True),
    "total_charge": ModelOutput("charge", "e", False),
    "spin_multiplicity": ModelOutput("", "", False),
}


@pytest.fixture(scope="module")
def all_inputs_model(tmp_path_factory):
    return load_model(export_input_model(tmp_path_factory.mktemp("inputs") / "all.pt", ALL_INPUTS))


def water_with_inputs() -> Atoms:
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    atoms.set_initial_charges([-0.8, 0.4, 0.4])
    atoms.set_velocities([[0.01, 0.0, 0.0], [0.0, 0.02, 0.0], [0.0, 0.0, 0.03]])
    atoms.info["charge"] = 0.0
    atoms.info["spin"] = 1.0
    return atoms


def good_inputs(atoms: Atoms) -> Dict[str, Tensor]:
    return {
        "masses": torch.tensor(atoms.get_masses()),
        "velocities": torch.tensor(atoms.get_velocities()),
        "charges": torch.tensor(atoms.get_initial_charges()),
        "total_charge": torch.tensor([0.0], dtype=torch.float64),
        "spin_multiplicity": torch.tensor([1.0], dtype=torch.float64),
    }


def nan_at(values: Tensor, index: int) -> Tensor:
    values = values.clone()
    values.view(-1)[index] = float("nan")
    return values


ENTRY_INPUTS = {
    # case: (inputs from good ones (None: none at all), quantity_units from ASE's, problem, fix)
    "no-inputs-at-all": (
        lambda good: None,
        lambda units: units,
        r"the model needs the input '\w+', which the engine did not give",
        r"see the engine's documentation for how to supply it",
    ),
    "missing-charges": (
        lambda good: {k: v for k, v in good.items() if k != "charges"},
        lambda units: units,
        r"the model needs the input 'charges', which the engine did not give",
        r"see the engine's documentation",
    ),
    "charges-with-two-columns": (
        lambda good: dict(good, charges=torch.zeros((3, 2), dtype=torch.float64)),
        lambda units: units,
        r"the input 'charges' has shape \[3, 2\], expected \[3, 1\] \(per atom\)",
        r"",
    ),
    "charges-of-another-atom-count": (
        lambda good: dict(good, charges=torch.zeros(4, dtype=torch.float64)),
        lambda units: units,
        r"the input 'charges' has shape \[4, 1\], expected \[3, 1\] \(per atom\)",
        r"",
    ),
    "velocities-flat": (
        lambda good: dict(good, velocities=torch.zeros(3, dtype=torch.float64)),
        lambda units: units,
        r"the input 'velocities' has shape \[3\], expected \[3, 3\] \(per atom\)",
        r"",
    ),
    "total-charge-per-atom": (
        lambda good: dict(good, total_charge=torch.zeros(3, dtype=torch.float64)),
        lambda units: units,
        r"the input 'total_charge' has shape \[3, 1\], expected \[1, 1\] \(per structure\)",
        r"",
    ),
    "nan-charge": (
        lambda good: dict(good, charges=nan_at(good["charges"], 1)),
        lambda units: units,
        r"the input 'charges' holds NaN or infinite values",
        r"give finite values",
    ),
    "infinite-velocity": (
        lambda good: dict(good, velocities=good["velocities"] / 0.0),
        lambda units: units,
        r"the input 'velocities' holds NaN or infinite values",
        r"give finite values",
    ),
    "nan-spin": (
        lambda good: dict(good, spin_multiplicity=torch.tensor([float("nan")], dtype=torch.float64)),
        lambda units: units,
        r"the input 'spin_multiplicity' holds NaN or infinite values",
        r"give finite values",
    ),
    "no-quantity-units": (
        lambda good: good,
        lambda units: None,
        r"the engine gave no unit of (mass|velocity|charge) \(quantity_units\) for the input '\w+'",
        r"",
    ),
    "no-charge-unit": (
        lambda good: good,
        lambda units: {k: v for k, v in units.items() if k != "charge"},
        r"the engine gave no unit of charge \(quantity_units\) for the input 'charges'",
        r"",
    ),
    "charge-unit-of-energy": (
        lambda good: good,
        lambda units: dict(units, charge="eV"),
        r"cannot convert 'eV' \(energy\) to 'e' \(charge\)",
        r"",
    ),
}


@pytest.mark.parametrize("case", list(ENTRY_INPUTS))
def test_bad_inputs_at_the_entry_point(case, all_inputs_model):
    """What C++ engines rely on: the archive itself checks the inputs it is given."""
    make_inputs, make_units, problem, fix = ENTRY_INPUTS[case]
    atoms = water_with_inputs()
    with pytest.raises(torch.jit.Error) as caught:
        all_inputs_model.module(
            torch.tensor(atoms.positions),
            torch.tensor(atoms.numbers, dtype=torch.int32),
            torch.zeros((1, 3, 3), dtype=torch.float64),
            torch.zeros((1, 3), dtype=torch.bool),
            torch.tensor([len(atoms)]),
            [],
            [],
            ["energy"],
            None,
            "energy",
            True,
            False,
            False,
            "Angstrom",
            "eV",
            False,
            make_inputs(good_inputs(atoms)),
            make_units(engine_quantity_units("ase")),
        )
    message = str(caught.value).strip().splitlines()[-1]
    assert message.startswith("builtins.ValueError: ")
    assert re.search(problem, message) and re.search(fix, message), message


def without(atoms: Atoms, what: str) -> Atoms:
    atoms = atoms.copy()
    if what == "charges":
        atoms.arrays.pop("initial_charges")
    else:
        atoms.info.pop(what)
    return atoms


def with_info(atoms: Atoms, **info) -> Atoms:
    atoms.info.update(info)
    return atoms


RUNNER_INPUTS = {
    # case: (structures, problem, fix)
    "atoms-without-charges": (
        lambda: [without(water_with_inputs(), "charges")],
        r"the model needs per-atom charges and these atoms have none",
        r"set them with atoms\.set_initial_charges\(\.\.\.\) \(or an extxyz 'initial_charges' column\)",
    ),
    "atoms-without-total-charge": (
        lambda: [without(water_with_inputs(), "charge")],
        r"the model needs the total charge and atoms\.info has no 'charge'",
        r'set atoms\.info\["charge"\]',
    ),
    "atoms-without-spin": (
        lambda: [without(water_with_inputs(), "spin")],
        r"the model needs the spin multiplicity and atoms\.info has no 'spin'",
        r'set atoms\.info\["spin"\] \(the spin multiplicity 2S\+1: 1 for a singlet\)',
    ),
    "spin-that-is-not-a-number": (
        lambda: [with_info(water_with_inputs(), spin="triplet")],
        r'atoms\.info\["spin"\] = \'triplet\' is not a number',
        r"",
    ),
    "structure-without-an-input": (
        lambda: [water_with_inputs(), Structure([8, 1, 1], water_with_inputs().positions, np.zeros((3, 3)), False)],
        r"the model needs the input '\w+', which structure 1 does not have",
        r"",
    ),
}


@pytest.mark.parametrize("case", list(RUNNER_INPUTS))
def test_bad_inputs_through_model_runner(case, all_inputs_model):
    make, problem, fix = RUNNER_INPUTS[case]
    with pytest.raises(ValueError) as caught:
        ModelRunner(all_inputs_model).run(make(), ["energy"])
    message = str(caught.value)
    one_line(message)
    assert re.search(problem, message) and re.search(fix, message), message


def test_structure_input_of_the_wrong_size_is_named(all_inputs_model):
    atoms = water_with_inputs()
    inputs = {name: values.numpy() for name, values in good_inputs(atoms).items()}
    inputs["charges"] = np.zeros(5)
    structure = Structure(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, inputs)
    with pytest.raises(ValueError, match=r"input 'charges'.*5 values for 3 atoms"):
        ModelRunner(all_inputs_model).run([structure], ["energy"])


def test_inputs_declared_in_capabilities_alone(tmp_path):
    class Reader(torch.nn.Module):
        def requested_neighbor_lists(self) -> List[NeighborListOptions]:
            return []

        def forward(
            self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
        ) -> Dict[str, Tensor]:
            return {"energy": torch.stack([s.get_input("charges").sum() for s in systems]).reshape(-1, 1)}

    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput("energy", "eV")}, atomic_types=[1, 8], interaction_range=0.0, inputs=CHARGES
    )
    export(Reader(), str(tmp_path / "m.pt"), capabilities)
    result = ModelRunner(str(tmp_path / "m.pt")).run([water_with_inputs()], ["energy"])
    assert result["energy"][0, 0] == pytest.approx(0.0, abs=1e-15)
