"""`atomplug crosscheck` on the real engines: agreement for LJ and ANI-1x, and a planted disagreement.

The planted model is LJ plus lambda * (V - V0): at the test structure (V = V0) its energy and forces
are LJ's, but its virial is W - lambda V I, with lambda chosen to flip the sign of the virial's
trace. Given to LAMMPS only, the crosscheck must fail on the virial and on nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon, water_box
from torch import Tensor
from variant_model import export_variant_model

from atomplug.cli.crosscheck import crosscheck, format_report, reference_with_ase
from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.core.frames import standard_orientation
from atomplug.examples.lj import LennardJones


def atomplug_cli(*args: str) -> subprocess.CompletedProcess:
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=600)


def random_rotation(seed: int) -> np.ndarray:
    matrix, upper = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    matrix = matrix * np.sign(np.diag(upper))
    return matrix if np.linalg.det(matrix) > 0 else -matrix


@pytest.fixture(scope="module")
def argon():
    """A displaced triclinic argon box, then rotated away from LAMMPS' and i-PI's orientation."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    rotation = random_rotation(3)
    atoms.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rotation.T
    return atoms


def test_standard_orientation_is_a_rotation(argon):
    rotated, rotation = standard_orientation(argon)
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-14)
    assert np.allclose(np.triu(rotated.cell.array, 1), 0.0, atol=1e-12)
    assert np.allclose(rotated.get_all_distances(mic=True), argon.get_all_distances(mic=True), atol=1e-12)


def test_lj_agrees_in_every_engine(lj_model_path, argon, tmp_path):
    report = crosscheck(lj_model_path, argon, ranks=(1, 2), workdir=str(tmp_path))
    print("\n" + format_report(report))
    assert report.passed, format_report(report)
    assert [c.engine for c in report.comparisons] == ["ipi", "lammps:1", "lammps:2", "plumed"]
    for comparison in report.comparisons:
        assert comparison.status == "ok"
        # not merely within 1e-10: float64 engines agree to rounding
        assert max(comparison.energy, comparison.forces, comparison.virial) < 1e-12, comparison


def test_ani1x_agrees_in_every_engine(ani1x_path, tmp_path):
    """A periodic water box (smaller than twice the cutoff, so every engine uses periodic images)
    and an isolated molecule (no cell: LAMMPS shrink-wraps, i-PI and PLUMED use no PBC)."""
    water = water_box(8, seed=2)
    for atoms in (water, molecule("CH3CONH2")):
        report = crosscheck(ani1x_path, atoms, ranks=(2,), workdir=str(tmp_path / atoms.get_chemical_formula()))
        print("\n" + format_report(report))
        assert report.passed, format_report(report)
        assert len(report.compared) == 3


@pytest.mark.parametrize("exchange", [False, True], ids=["widened", "exchange"])
def test_message_passing_model_agrees_on_every_rank_count(
    message_passing_path, message_passing_exchange_path, exchange, tmp_path
):
    """The message-passing example (range 3 x its cutoff) in every engine, LAMMPS on 1, 2 and 4
    ranks (the last two widen their ghost region to the range, or, with the exchange, keep it at
    one cutoff and exchange ghost features between layers)."""
    from structures import hco_liquid

    model = message_passing_exchange_path if exchange else message_passing_path
    report = crosscheck(model, hco_liquid(), ranks=(1, 2, 4), workdir=str(tmp_path))
    print("\n" + format_report(report))
    assert report.passed, format_report(report)
    assert [c.engine for c in report.comparisons] == ["ipi", "lammps:1", "lammps:2", "lammps:4", "plumed"]
    for comparison in report.comparisons:
        assert max(comparison.energy, comparison.forces, comparison.virial) < 1e-10, comparison


COMPILED_ROWS = ["ase+compiled", "ipi+compiled", "lammps:1+compiled", "lammps:2+compiled", "plumed+compiled"]


@pytest.mark.parametrize("model", ["lj", "message-passing"])
def test_compiled_packages_agree_in_every_engine(
    model, lj_model_path, lj_package_path, message_passing_path, message_passing_package_path, argon, tmp_path
):
    """Issue 18: the compiled package in every engine (LAMMPS on 1 and 2 ranks) against the same
    TorchScript reference, next to the TorchScript runs."""
    from structures import hco_liquid

    path, package, atoms = {
        "lj": (lj_model_path, lj_package_path, argon),
        "message-passing": (message_passing_path, message_passing_package_path, hco_liquid()),
    }[model]
    report = crosscheck(path, atoms, ranks=(1, 2), workdir=str(tmp_path), package=package)
    print("\n" + format_report(report))
    assert report.passed, format_report(report)
    assert [c.engine for c in report.comparisons] == ["ipi", "lammps:1", "lammps:2", "plumed"] + COMPILED_ROWS
    for comparison in report.comparisons:
        assert max(comparison.energy, comparison.forces, comparison.virial) < 1e-12, comparison
    assert "LAMMPS 2 ranks compiled" in format_report(report)


class VolumeShiftedLJ(torch.nn.Module):
    """LJ + lambda (V - V0): LJ's energy and forces at volume V0, another virial (see module doc)."""

    def __init__(self, pressure: float, volume: float):
        super().__init__()
        self.lj = LennardJones(AR_EPSILON, AR_SIGMA, AR_CUTOFF)
        self.pressure = float(pressure)
        self.volume = float(volume)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return self.lj.requested_neighbor_lists()

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        energies = self.lj(systems, outputs, selected_atoms)["energy"]
        per_atom = outputs["energy"].per_atom
        shifts: List[Tensor] = []
        for system in systems:
            shift = self.pressure * (torch.abs(torch.linalg.det(system.cell)) - self.volume)
            if per_atom:
                shifts.append(shift.expand(len(system)) / len(system))
            else:
                shifts.append(shift.reshape(1))
        return {"energy": energies + torch.cat(shifts).reshape(-1, 1)}


def export_volume_shifted(path: str, pressure: float, volume: float) -> None:
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[18],
        interaction_range=AR_CUTOFF,
        length_unit="Angstrom",
    )
    export(VolumeShiftedLJ(pressure, volume), path, capabilities, ModelMetadata(name="LJ with a planted virial"))


def test_planted_wrong_virial_for_one_engine_fails(lj_model_path, argon, tmp_path):
    reference = reference_with_ase(lj_model_path, argon)
    volume = argon.get_volume()
    pressure = 2.0 * np.trace(reference.virial) / (3.0 * volume)  # W' = W - lambda V I: trace flips sign
    planted = str(tmp_path / "planted.pt")
    export_volume_shifted(planted, pressure, volume)
    planted_reference = reference_with_ase(planted, argon)
    assert np.isclose(np.trace(planted_reference.virial), -np.trace(reference.virial), rtol=1e-10)

    report = crosscheck(lj_model_path, argon, ranks=(1,), models={"lammps": planted}, workdir=str(tmp_path / "run"))
    print("\n" + format_report(report))
    assert not report.passed
    rows = {c.engine: c for c in report.comparisons}
    assert rows["lammps:1"].status == "DIFFERS"
    assert rows["lammps:1"].note.startswith("virial beyond")
    assert rows["lammps:1"].energy < 1e-12 and rows["lammps:1"].forces < 1e-12
    assert rows["lammps:1"].virial > 0.5
    assert all(rows[name].status == "ok" for name in ("ipi", "plumed"))

    # the command line says so too: the table, a FAIL verdict, exit status 1, and the plot
    structure = str(tmp_path / "argon.extxyz")
    ase.io.write(structure, argon)
    plot = str(tmp_path / "crosscheck.png")
    run = atomplug_cli(
        "crosscheck",
        lj_model_path,
        structure,
        "--ranks",
        "1",
        "--engines",
        "lammps",
        "--model-for",
        f"lammps={planted}",
        "--output",
        plot,
        "--quiet",
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "verdict: FAIL: LAMMPS 1 rank" in run.stdout
    assert "DIFFERS (virial beyond 1e-10)" in run.stdout
    assert os.path.getsize(plot) > 10_000


def test_cli_passes_on_a_slab_and_skips_what_cannot_run(lj_model_path, tmp_path):
    """A slab (periodic in x and y only): i-PI and PLUMED say why they cannot run it, LAMMPS does."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    atoms.pbc = [True, True, False]
    structure = str(tmp_path / "slab.extxyz")
    ase.io.write(structure, atoms)
    run = atomplug_cli("crosscheck", lj_model_path, structure, "--ranks", "1", "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: PASS: 1 engine run(s)" in run.stdout
    assert "skipped (i-PI treats a structure as fully periodic or not at all" in run.stdout
    assert "skipped (PLUMED treats a structure as fully periodic or not at all" in run.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing.pt", "{structure}"], "does not exist"),
        (["{model}", "missing.xyz"], "structure file 'missing.xyz' does not exist"),
        (["{model}", "{structure}", "--ranks", "0"], "--ranks needs positive rank counts"),
        (["{model}", "{structure}", "--ranks", "one"], "--ranks takes comma-separated rank counts"),
        (["{model}", "{structure}", "--engines", "gromacs"], "unknown engine(s) gromacs in --engines"),
        (["{model}", "{structure}", "--model-for", "lammps"], "--model-for takes ENGINE=MODEL"),
        (
            ["{model}", "{structure}", "--model-for", "ase={model}"],
            "a model override is for 'ipi', 'lammps' or 'plumed'",
        ),
        (["{model}", "{structure}", "--index", ":"], "crosscheck takes one"),
        (["{model}", "{structure}", "--output", "/nonexistent/dir/plot.png"], "the directory of --output"),
        (["{model}", "{structure}", "--output", "plot.txt"], "give a .png, .pdf or .svg file name"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(lj_model_path, tmp_path, arguments, message):
    structure = str(tmp_path / "argon.extxyz")
    ase.io.write(structure, displaced_triclinic_argon(repeat=(2, 2, 2)))
    arguments = [a.format(model=lj_model_path, structure=structure) for a in arguments]
    run = subprocess.run(
        [shutil.which("atomplug", path=os.path.dirname(sys.executable)), "crosscheck", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomplug: error:"), run.stderr
    assert message in lines[0]


def test_float32_model_agrees_within_its_documented_bound(argon, tmp_path):
    """A float32 LJ: engines differ by float32 rounding (~1e-7 in energy, ~1e-5 in forces), well
    inside the float32 bound 1e-4 and far outside the float64 one."""
    path = str(tmp_path / "lj32.pt")
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[18],
        interaction_range=AR_CUTOFF,
        length_unit="Angstrom",
        dtype="float32",
    )
    export(LennardJones(AR_EPSILON, AR_SIGMA, AR_CUTOFF), path, capabilities, ModelMetadata(name="LJ float32"))
    report = crosscheck(path, argon, ranks=(2,), engines=("ase", "lammps", "plumed"), workdir=str(tmp_path / "run"))
    print("\n" + format_report(report))
    assert report.dtype == "float32" and report.tolerance == 1e-4
    assert report.passed, format_report(report)
    worst = max(max(c.energy, c.forces, c.virial) for c in report.compared)
    assert 1e-10 < worst < 1e-4


# ---- inputs and variants --------------------------------------------------------------------------


def test_coulomb_charges_agree_in_every_engine(tmp_path):
    """Per-atom charges read from the structure (ASE's initial charges) reach every engine."""
    from ase.build import bulk

    from atomplug.examples.coulomb import export_coulomb

    model = str(tmp_path / "coulomb.pt")
    export_coulomb(model)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=3)
    atoms.set_initial_charges(np.where(atoms.numbers == 11, 0.8, -0.8))
    report = crosscheck(model, atoms, ranks=(1, 2), workdir=str(tmp_path / "work"))
    print("\n" + format_report(report))
    assert report.passed, format_report(report)
    assert report.inputs == ["charges"] and "inputs     charges" in format_report(report)
    assert [c.engine for c in report.comparisons] == ["ipi", "lammps:1", "lammps:2", "plumed"]


def test_charge_and_spin_from_the_command_line(tmp_path):
    """`atomplug crosscheck --charge --spin`: the total charge and multiplicity in every engine."""
    from atomplug.examples.inputs import export_charge_spin

    model = str(tmp_path / "charge_spin.pt")
    export_charge_spin(model)
    ase.io.write(tmp_path / "methanol.xyz", molecule("CH3OH"))
    run = atomplug_cli(
        "crosscheck", model, str(tmp_path / "methanol.xyz"), "--charge", "-1", "--spin", "3", "--ranks", "1", "-q"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: PASS: 3 engine run(s) agree with ASE" in run.stdout
    # E = sum_i a_t Q^2 + b_t (S - 1) + pair term: Q = -1, S = 3 (examples/inputs.py's a_t, b_t)
    assert "inputs     spin_multiplicity, total_charge" in run.stdout


def test_variant_agrees_in_every_engine(tmp_path):
    model = str(tmp_path / "variant.pt")
    export_variant_model(model)
    atoms = water_box(4, seed=5)
    report = crosscheck(model, atoms, ranks=(2,), workdir=str(tmp_path / "work"), variant="alt")
    print("\n" + format_report(report))
    assert report.passed, format_report(report)
    assert "variant alt" in format_report(report).splitlines()[0]
    assert [c.engine for c in report.comparisons] == ["ipi", "lammps:2", "plumed"]
    # every engine took energy/alt (7/3 of the plain energy here), not energy
    plain = reference_with_ase(model, atoms).energy
    for comparison in report.comparisons:
        assert comparison.engine_energy == pytest.approx(7.0 / 3.0 * plain, rel=1e-12), comparison
