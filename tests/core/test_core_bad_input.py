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
