"""Bad input for `atomplug-ipi`, against a real i-PI server where i-PI is involved: one line
naming the problem and the fix, a non-zero exit within seconds; one atom and atoms far outside
the cell give the right numbers."""

from __future__ import annotations

import os
import re
import subprocess
import time

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr
from bad_files import MODEL_FILE_FIX, MODEL_FILE_KINDS, MODEL_FILE_PROBLEMS, unpickled_marker, write_model_file
from ipi_harness import (
    argon_frames,
    executable,
    log_text,
    pimd_xml,
    replay,
    socket_xml,
    unique_socket_name,
    wait,
    write_ipi_xyz,
)

from atomplug.ipi_driver.evaluator import DriverError, IPIEvaluator


def water_file(directory) -> str:
    path = os.path.join(str(directory), "water.xyz")
    molecule("H2O").write(path)
    return path


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS)
def test_model_file_is_refused(kind, lj_model_path, tmp_path):
    """The evaluator is what `atomplug-ipi` (exit 2), `i-pi-py_driver -m custom` and <ffdirect> run."""
    with pytest.raises(DriverError) as caught:
        IPIEvaluator(write_model_file(kind, tmp_path, lj_model_path), water_file(tmp_path))
    message = str(caught.value)
    assert re.search(MODEL_FILE_PROBLEMS[kind], message) and re.search(MODEL_FILE_FIX, message), message
    assert not os.path.exists(unpickled_marker(tmp_path))


def test_command_refuses_a_pickle_without_unpickling_it(lj_model_path, tmp_path):
    model = write_model_file("torch-save-pickle", tmp_path, lj_model_path)
    run = subprocess.run(
        [executable("atomplug-ipi"), "--model", model, "--structure", water_file(tmp_path), "--unix", "never-used"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("atomplug-ipi: error: "), run.stderr
    assert "without atomplug metadata, not an atomplug model: wrap and export the module" in run.stderr
    assert not os.path.exists(unpickled_marker(tmp_path))


OPTIONS = {"bad-device-name": ("tpu", r"'tpu' is not a torch device: use 'cpu', 'cuda' or 'cuda:N'")}
if not torch.cuda.is_available():
    OPTIONS["cuda-without-gpu"] = ("cuda", r"device 'cuda' asked, but torch .* sees no CUDA device: use device 'cpu'")


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_device(case, lj_model_path, tmp_path):
    device, message = OPTIONS[case]
    argon = tmp_path / "argon.xyz"
    Atoms("Ar", positions=[[0, 0, 0]]).write(argon)
    with pytest.raises(DriverError, match=message):
        IPIEvaluator(lj_model_path, str(argon), device=device)


def periodic_argon_template(directory) -> str:
    path = os.path.join(str(directory), "argon.extxyz")
    Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]], cell=np.eye(3) * 12.0, pbc=True).write(path)
    return path


GOOD_H = np.eye(3) * 12.0 / Bohr  # i-PI's cell: lattice vectors as columns, Bohr
GOOD_POSITIONS = np.array([[0.0, 0.0, 0.0], [3.8, 0.0, 0.0]]) / Bohr

REQUESTS = {
    # case: (i-PI's cell h, positions, problem, fix), for a periodic two-argon template
    "nan-position": (
        GOOD_H,
        np.where([[False] * 3, [False, True, False]], np.nan, GOOD_POSITIONS),
        r"atom\(s\) \[1\] are NaN or infinite",
        r"fix the structure before evaluating",
    ),
    "infinite-position": (
        GOOD_H,
        np.where([[True, False, False], [False] * 3], np.inf, GOOD_POSITIONS),
        r"atom\(s\) \[0\] are NaN or infinite",
        r"fix the structure before evaluating",
    ),
    "overlapping-atoms": (
        GOOD_H,
        np.zeros((2, 3)),
        r"atoms 0 and 1 are only 0 Bohr apart \(overlapping atoms",
        r"remove the duplicate atom or move the atoms apart",
    ),
    "singular-cell": (
        np.array([[12.0, 12.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 12.0]]) / Bohr,
        GOOD_POSITIONS,
        r"periodic cell vectors are linearly dependent \(the cell is flat\)",
        r"give a cell with a non-zero volume",
    ),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_bad_structure_from_the_server(case, lj_model_path, tmp_path):
    """What the client does with each request i-PI sends (a DriverError: exit 1 with the message)."""
    h, positions, problem, fix = REQUESTS[case]
    evaluator = IPIEvaluator(lj_model_path, periodic_argon_template(tmp_path))
    assert evaluator(GOOD_H, GOOD_POSITIONS)[0] < 0.0
    with pytest.raises(DriverError) as caught:
        evaluator(h, positions)
    message = str(caught.value)
    assert message.startswith("the model failed on the structure i-PI sent: ")
    assert re.search(problem, message) and re.search(fix, message), message


def test_template_without_atoms(lj_model_path, tmp_path):
    empty = tmp_path / "empty.extxyz"
    empty.write_text('0\nLattice="10 0 0 0 10 0 0 0 10" Properties=species:S:1:pos:R:3 pbc="T T T"\n')
    with pytest.raises(
        DriverError, match=r"the structure file '.*empty.extxyz' holds no atoms: give the file i-PI starts from"
    ):
        IPIEvaluator(lj_model_path, str(empty))


def test_atom_count_differs_from_the_server(procs, lj_model_path, tmp_path):
    """i-PI simulates 5 atoms, the client was given a 3-atom structure: it stops at once."""
    argon3 = tmp_path / "argon3.xyz"
    Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0]]).write(argon3)
    five = Atoms("Ar5", positions=[[3.8 * k, 0, 0] for k in range(5)])
    write_ipi_xyz(str(tmp_path / "init.xyz"), [five], box_bohr=60.0)
    name = unique_socket_name("natoms")
    server = procs.ipi(pimd_xml(socket_xml("model", unix=name, pbc=False), "init.xyz", steps=5, nbeads=1))
    started = time.monotonic()
    client = procs.client("--model", lj_model_path, "--structure", str(argon3), "--unix", name)
    status = wait(client, 60)
    text = log_text(client)
    assert status == 1, text
    assert (
        "atomplug-ipi: error: i-PI sends 5 atoms but the structure file has 3: give atomplug-ipi the structure "
        "that i-PI simulates" in text
    )
    assert "Traceback" not in text
    assert time.monotonic() - started < 60
    assert server.poll() is None  # i-PI itself waits for a client that fits (the test ends it)


def test_one_atom_has_zero_energy(procs, lj_model_path, tmp_path):
    atom = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])
    frames = [atom.copy() for _ in range(2)]
    frames[1].positions += 1.7
    template = tmp_path / "argon.xyz"
    atom.write(template)  # plain xyz: an isolated atom
    name = unique_socket_name("one")

    def start():
        return [procs.client("--model", lj_model_path, "--structure", str(template), "--unix", name)]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name, pbc=False), box_bohr=40.0, start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    for record in records:
        assert record.energy == 0.0 and np.all(record.forces == 0.0) and np.all(record.virial == 0.0)


def test_atoms_far_outside_the_cell(procs, lj_model_path, tmp_path):
    """With pbc="false" i-PI sends positions as they are, hundreds of Bohr outside the box: the
    same energy and forces as for the wrapped structure."""
    base, frames = argon_frames(1, seed=8)
    far = frames[0].copy()
    far.positions += np.random.default_rng(2).integers(-40, 40, size=(len(far), 3)) @ far.cell.array
    template = tmp_path / "argon.extxyz"
    base.write(template)
    name = unique_socket_name("far")

    def start():
        return [procs.client("--model", lj_model_path, "--structure", str(template), "--unix", name)]

    _, clients, records = replay(procs, [frames[0], far], socket_xml("model", unix=name, pbc=False), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    wrapped, unwrapped = records[1], records[2]
    assert np.abs(unwrapped.positions - wrapped.positions).max() > 500.0  # Bohr: many cells away
    assert unwrapped.energy == pytest.approx(wrapped.energy, rel=1e-12)
    scale = np.abs(wrapped.forces).max()
    np.testing.assert_allclose(unwrapped.forces, wrapped.forces, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(unwrapped.virial, wrapped.virial, rtol=0, atol=1e-10 * np.abs(wrapped.virial).max())


# ---- inputs and variants --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def input_models(tmp_path_factory):
    from variant_model import export_variant_model

    from atomplug.examples.coulomb import export_coulomb
    from atomplug.examples.inputs import export_charge_spin, export_kinetic

    directory = tmp_path_factory.mktemp("bad_inputs")
    paths = {name: str(directory / f"{name}.pt") for name in ("coulomb", "charge_spin", "kinetic", "variant")}
    export_coulomb(paths["coulomb"])
    export_charge_spin(paths["charge_spin"])
    export_kinetic(paths["kinetic"])
    export_variant_model(paths["variant"])
    return paths


def test_velocities_are_refused_at_start_up(input_models, tmp_path):
    """i-PI's socket protocol sends no velocities: the client says so and stops (exit 2) before
    waiting for any server."""
    run = subprocess.run(
        [
            executable("atomplug-ipi"),
            "--model",
            input_models["kinetic"],
            "--structure",
            water_file(tmp_path),
            "--unix",
            "never-used",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("atomplug-ipi: error: "), run.stderr
    assert (
        "the model requests the atoms' velocities, which the i-PI socket protocol does not send (i-PI sends only "
        "the cell and the positions): this model cannot run in i-PI; use it from ASE or LAMMPS" in run.stderr
    )


INPUT_PROBLEMS = {
    # case: (model, options, problem and fix)
    "missing-charges": (
        "coulomb",
        {},
        r"the model needs per-atom charges and the structure file '.*water.xyz' has none: give an extxyz file "
        r"with an 'initial_charges' column",
    ),
    "missing-total-charge": (
        "charge_spin",
        {"spin": 1},
        r"the model needs the total charge \(e\) and none was given: give --charge \(or charge=\.\.\. in the "
        r"extxyz comment line of '.*water.xyz'\)",
    ),
    "missing-spin": (
        "charge_spin",
        {"charge": 0},
        r"the model needs the spin multiplicity 2S\+1 \(1 for a singlet\) and none was given: give --spin",
    ),
    "charge-not-a-number": ("charge_spin", {"charge": "one", "spin": 1}, r"--charge 'one' is not a number"),
    "spin-not-finite": ("charge_spin", {"charge": 0, "spin": float("nan")}, r"--spin nan is not a finite number"),
    "unknown-variant": (
        "variant",
        {"variant": "ccsdt"},
        r"--variant: the model has no variant 'ccsdt' of 'energy' \(available: alt\): choose one of those",
    ),
    "variant-of-a-model-without-variants": (
        "coulomb",
        {"variant": "alt"},
        r"--variant: the model has no variant 'alt' of 'energy' \(available: none\)",
    ),
}


@pytest.mark.parametrize("case", list(INPUT_PROBLEMS))
def test_missing_or_bad_input(case, input_models, tmp_path):
    model, options, problem = INPUT_PROBLEMS[case]
    with pytest.raises(DriverError) as caught:
        IPIEvaluator(input_models[model], water_file(tmp_path), **options)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(problem, message), message


def test_charge_and_spin_from_the_extxyz_comment(input_models, tmp_path):
    """charge= and spin= in an extxyz comment line stand in for --charge / --spin; the flags win."""
    path = tmp_path / "water.extxyz"
    atoms = molecule("H2O")
    atoms.info.update(charge=1, spin=2)
    atoms.write(path)
    evaluator = IPIEvaluator(input_models["charge_spin"], str(path))
    assert evaluator.inputs["total_charge"][0] == 1.0 and evaluator.inputs["spin_multiplicity"][0] == 2.0
    evaluator = IPIEvaluator(input_models["charge_spin"], str(path), charge=-2)
    assert evaluator.inputs["total_charge"][0] == -2.0
