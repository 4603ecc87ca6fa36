"""Models with inputs and variants through a real i-PI server: per-atom charges from the structure
file (the cut Coulomb model against the numpy reference), total charge and spin from --charge and
--spin (against ModelRunner and the closed form), --variant (against the ASE calculator)."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
from ase.build import bulk, molecule
from ase.geometry import cellpar_to_cell
from ase.units import Bohr
from ipi_harness import (
    agreement,
    forces_to_ev_per_angstrom,
    log_text,
    read_extras,
    replay,
    socket_xml,
    to_ev,
    unique_socket_name,
    wait,
)
from variant_model import export_variant_model

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import ModelRunner
from atomplug.core.runner import Structure
from atomplug.examples.coulomb import LAMMPS_METAL_COULOMB_CONSTANT, coulomb_reference, export_coulomb
from atomplug.examples.inputs import export_charge_spin

# i-PI writes its records with 17 digits and the frames go in at full precision: what is left is
# the summation order of two float64 codes (1e-13) and the atomic-unit round trip (1e-15)
TOLERANCE = 1e-10


def nacl_frames(n_frames: int, seed: int = 3):
    """Rattled rock salt (64 ions, charges +-0.8 e) in ASE's standard orientation, then displaced copies."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell.array + [[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, -0.2, 0.0]], scale_atoms=True)
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    atoms.set_initial_charges(np.where(atoms.numbers == 11, 0.8, -0.8))
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        frame = atoms.copy()
        frame.positions += rng.uniform(-0.1, 0.1, size=frame.positions.shape)
        frames.append(frame)
    return atoms, frames


def test_coulomb_charges_from_the_structure_file(procs, tmp_path):
    model = str(tmp_path / "coulomb.pt")
    export_coulomb(model, cutoff=6.0)
    base, frames = nacl_frames(2)
    template = tmp_path / "nacl.extxyz"
    base.write(template)  # extxyz: the lattice, and the charges in an initial_charges column
    name = unique_socket_name("coulomb")

    def start():
        return [procs.client("--model", model, "--structure", str(template), "--unix", name)]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    assert "inputs: charges from the structure file" in log_text(clients[0])
    for record, frame in zip(records[1:], frames):
        energy, forces = coulomb_reference(
            record.positions * Bohr,
            frame.get_initial_charges(),
            frame.cell.array,
            frame.pbc,
            6.0,
            LAMMPS_METAL_COULOMB_CONSTANT,
        )
        assert abs(to_ev(record.energy) - energy) / abs(energy) < TOLERANCE
        ipi_forces = forces_to_ev_per_angstrom(record.forces)
        assert np.abs(ipi_forces - forces).max() / np.abs(forces).max() < TOLERANCE
    worst = agreement(records, frames, AtomplugCalculator(model))  # the virial, with the ASE calculator's stress
    print(f"\ncut Coulomb NaCl (64 ions) through i-PI vs ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst


def test_charge_and_spin_from_the_command_line(procs, tmp_path):
    model = str(tmp_path / "charge_spin.pt")
    export_charge_spin(model)
    base = molecule("CH3OH")
    rng = np.random.default_rng(1)
    frames = [base.copy() for _ in range(2)]
    for frame in frames:
        frame.positions += rng.normal(0.0, 0.05, frame.positions.shape)
    template = tmp_path / "methanol.xyz"
    base.write(template)  # a plain xyz: no charge or spin in it
    name = unique_socket_name("spin")

    def start():
        arguments = ["--model", model, "--structure", str(template), "--unix", name, "--charge", "-1", "--spin", "2"]
        return [procs.client(*arguments)]

    forcefield = socket_xml("model", unix=name, pbc=False)
    _, clients, records = replay(procs, frames, forcefield, box_bohr=40.0, start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    assert "total_charge -1" in log_text(clients[0]) and "spin_multiplicity 2" in log_text(clients[0])
    runner = ModelRunner(model)
    inputs = {"total_charge": np.array([-1.0]), "spin_multiplicity": np.array([2.0])}
    terms = {1: 0.5 + 0.1, 6: 0.25 + 0.2, 8: 0.125 + 0.4}  # a_t Q^2 + b_t (S - 1) with Q = -1, S = 2
    constant = sum(terms[z] for z in base.numbers)
    for record in records[1:]:
        structure = Structure(base.numbers, record.positions * Bohr, np.zeros((3, 3)), False, inputs)
        expected = runner.run([structure], ["energy"], forces=True)
        assert abs(to_ev(record.energy) - expected["energy"][0, 0]) / abs(expected["energy"][0, 0]) < TOLERANCE
        forces = forces_to_ev_per_angstrom(record.forces)
        assert np.abs(forces - expected["forces"]).max() / np.abs(expected["forces"]).max() < TOLERANCE
        neutral = runner.run(
            [
                Structure(
                    base.numbers,
                    record.positions * Bohr,
                    np.zeros((3, 3)),
                    False,
                    {"total_charge": np.array([0.0]), "spin_multiplicity": np.array([1.0])},
                )
            ]
        )  # the pair term alone
        assert abs(to_ev(record.energy) - neutral["energy"][0, 0] - constant) < 1e-10 * constant


def test_variant(procs, tmp_path):
    model = str(tmp_path / "variant.pt")
    export_variant_model(model)
    base = bulk("NaCl", "rocksalt", a=4.2, cubic=True).repeat((2, 1, 1))
    base.set_cell(cellpar_to_cell(base.cell.cellpar()), scale_atoms=True)
    rng = np.random.default_rng(4)
    frames = [base.copy() for _ in range(2)]
    for frame in frames:
        frame.positions += rng.uniform(-0.1, 0.1, frame.positions.shape)
    template = tmp_path / "nacl.extxyz"
    base.write(template)
    name = unique_socket_name("variant")

    def start():
        arguments = ["--structure", str(template), "--unix", name, "--variant", "alt"]
        return [procs.client("--model", model, *arguments, "--extras", "energy_uncertainty,atomplug::n_pairs")]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    assert "variant: alt (energy from energy/alt)" in log_text(clients[0])
    calculator = AtomplugCalculator(model, variant="alt", additional_outputs=["energy_uncertainty"])
    worst = agreement(records, frames, calculator)
    print(f"\nvariant alt through i-PI vs ASE calculator variant='alt': {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst
    plain = AtomplugCalculator(model)
    printed = [ast.literal_eval(line) for line in read_extras(os.path.join(procs.workdir, "sim.xtr_0"))]
    extras = [json.loads(fields["raw"][0]) for fields in printed]  # i-PI's per-bead lists; "raw": the client's JSON
    assert len(extras) == len(records)
    for record, extra in zip(records, extras):
        atoms = frames[0].copy()
        atoms.positions = record.positions * Bohr
        atoms.calc = calculator
        atoms.get_potential_energy()
        uncertainty = calculator.results["energy_uncertainty"]  # eV: energy_uncertainty/alt
        assert abs(to_ev(extra["energy_uncertainty"]) - uncertainty) < 1e-10 * abs(uncertainty)
        assert extra["atomplug::n_pairs"] == calculator.run(atoms, ["atomplug::n_pairs"])["atomplug::n_pairs"][0, 0]
        assert abs(to_ev(record.energy) - 7.0 / 3.0 * plain.get_potential_energy(atoms)) < 1e-10 * abs(
            to_ev(record.energy)
        )
