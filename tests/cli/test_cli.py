"""The `atomplug` command line: info, eval (round trip through ASE's reader), export-example, errors."""

import os
import shutil
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from lj_reference import lennard_jones_reference
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon
from variant_model import export_variant_model

from atomplug.cli import main
from atomplug.core import ModelRunner


def atomplug(*args):
    """The installed console script, as a user runs it."""
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    assert script, "the 'atomplug' console script is installed next to the interpreter"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300)


def test_info_shows_contract(lj_model_path):
    run = atomplug("info", lj_model_path)
    assert run.returncode == 0, run.stderr
    for expected in ("Ar (18)", "Angstrom", "energy", "per atom", "half, strict", f"{AR_CUTOFF}"):
        assert expected in run.stdout
    assert "ghost exchange" not in run.stdout


def test_info_says_a_model_exchanges_ghosts(message_passing_exchange_path, capsys):
    assert main(["info", message_passing_exchange_path]) == 0
    shown = capsys.readouterr().out
    assert "interaction    7.5 Angstrom" in shown
    assert "ghost exchange yes" in shown


def test_eval_round_trip_matches_independent_lj(lj_model_path, tmp_path):
    frames = [displaced_triclinic_argon(seed=seed) for seed in (1, 2, 3)]
    molecule_like = frames[0][:5].copy()
    molecule_like.pbc = False
    molecule_like.cell = np.zeros((3, 3))
    frames.append(molecule_like)
    source, target = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(source, frames)
    assert main(["eval", lj_model_path, str(source), "-o", str(target), "--batch-size", "2", "--quiet"]) == 0
    written = ase.io.read(target, ":")
    assert len(written) == len(frames)
    for atoms, original in zip(written, frames):
        energy, forces, virial = lennard_jones_reference(
            original.positions, original.cell.array, original.pbc, AR_EPSILON, AR_SIGMA, AR_CUTOFF
        )
        # extxyz keeps 8 decimals in its text, hence the absolute tolerances.
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-8)
        if original.pbc.all():
            stress = -virial / original.get_volume()
            voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-8)
        else:
            assert "stress" not in atoms.calc.results


def test_export_example_lj_runs(tmp_path):
    path = tmp_path / "lj.pt"
    run = atomplug("export-example", "lj", str(path))
    assert run.returncode == 0, run.stderr
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    assert ModelRunner(str(path)).run([atoms])["energy"][0, 0] < 0


def test_export_example_message_passing_runs(tmp_path):
    from atomplug.core import load_model

    path = tmp_path / "mp.pt"
    run = atomplug("export-example", "message-passing", str(path))
    assert run.returncode == 0, run.stderr
    capabilities = load_model(str(path)).capabilities
    assert capabilities.interaction_range == 7.5  # 3 layers x 2.5 A: beyond its one cutoff
    assert not capabilities.ghost_exchange
    assert main(["export-example", "message-passing-exchange", str(tmp_path / "mpx.pt")]) == 0
    assert load_model(str(tmp_path / "mpx.pt")).capabilities.ghost_exchange


def test_export_example_mace_needs_a_model_file(tmp_path):
    run = atomplug("export-example", "mace", str(tmp_path / "mace.pt"))
    assert run.returncode == 2
    assert "export-example mace needs the MACE model file: --from MODEL" in run.stderr
    run = atomplug("export-example", "lj", str(tmp_path / "lj.pt"), "--from", "x.model")
    assert run.returncode == 2 and "--from is for the mace example" in run.stderr
    # the ANI-1ccx variant needs its files, which the torchani wheel ships empty: named, nothing downloaded
    run = atomplug("export-example", "ani1x", str(tmp_path / "ani.pt"), "--from", "auto")
    assert run.returncode == 2 and "no complete ANI-1ccx files in" in run.stderr, run.stderr
    assert not (tmp_path / "ani.pt").exists()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, m: ["info", str(d / "missing.pt")], "does not exist"),
        (lambda d, m: ["eval", m, str(d / "missing.xyz"), "-o", str(d / "out.xyz")], "does not exist"),
        (
            lambda d, m: ["eval", m, str(d / "water.xyz"), "-o", str(d / "out.xyz")],
            "H (1), O (8) unknown to this model, which knows Ar (18)",
        ),
        (lambda d, m: ["eval", m, str(d / "argon.xyz"), "-o", str(d / "out.xyz"), "--batch-size", "0"], "batch-size"),
    ],
)
def test_errors_exit_2_with_message_and_write_nothing(lj_model_path, tmp_path, make_args, message):
    from ase.build import molecule

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    ase.io.write(tmp_path / "argon.xyz", bulk("Ar", "fcc", a=5.26, cubic=True))
    run = atomplug(*make_args(tmp_path, lj_model_path))
    assert run.returncode == 2
    assert run.stderr.startswith("atomplug: error:") and message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.xyz").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".atomplug-eval-")]


# ---- inputs and variants --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def input_models(tmp_path_factory):
    """The three input examples through `atomplug export-example`, and the variant model."""
    directory = tmp_path_factory.mktemp("input_models")
    paths = {}
    for name in ("coulomb", "charge-spin", "kinetic"):
        paths[name] = str(directory / f"{name}.pt")
        assert main(["export-example", name, paths[name]]) == 0
    paths["variant"] = str(directory / "variant.pt")
    export_variant_model(paths["variant"])
    return paths


def test_info_shows_inputs_and_variants(input_models, lj_model_path, capsys):
    expected = {
        "coulomb": [r"charges\s+charge \[e\], per atom"],
        "charge-spin": [
            r"total_charge\s+charge \[e\], per structure",
            r"spin_multiplicity\s+\(no unit\), per structure",
        ],
        "kinetic": [r"masses\s+mass \[amu\], per atom", r"velocities\s+velocity \[Angstrom/fs\], per atom"],
        "variant": [
            r"variants\s+\(choose one",
            r"\n  energy: alt\n",
            r"\n  energy_uncertainty: alt\n",
            r"inputs\n  \(none",
        ],
    }
    import re

    for name, patterns in expected.items():
        assert main(["info", input_models[name]]) == 0
        text = capsys.readouterr().out
        for pattern in patterns:
            assert re.search(pattern, text), (name, pattern, text)
    assert main(["info", lj_model_path]) == 0
    text = capsys.readouterr().out
    assert "variants" not in text and "inputs\n  (none: positions, types and cell only)" in text


def test_eval_variant_charges_and_spin(input_models, tmp_path):
    from atomplug.ase_calculator import AtomplugCalculator

    frames = []
    for seed in range(2):
        atoms = molecule_with_charges(seed)
        frames.append(atoms)
    ase.io.write(tmp_path / "in.extxyz", frames)  # the charges in an initial_charges column
    frames = ase.io.read(tmp_path / "in.extxyz", ":")  # as eval reads them (8 decimals)
    assert frames[0].has("initial_charges")
    cases = {
        "variant": (["--variant", "alt"], dict(variant="alt"), {}),
        "coulomb": ([], {}, {}),
        "charge-spin": (["--charge", "1", "--spin", "2"], {}, {"charge": 1.0, "spin": 2.0}),
    }
    for name, (options, calculator_options, info) in cases.items():
        target = tmp_path / f"{name}.extxyz"
        assert main(["eval", input_models[name], str(tmp_path / "in.extxyz"), "-o", str(target), "-q", *options]) == 0
        calculator = AtomplugCalculator(input_models[name], **calculator_options)
        for written, original in zip(ase.io.read(target, ":"), frames):
            atoms = original.copy()
            atoms.info.update(info)
            atoms.calc = calculator
            # extxyz keeps 8 decimals in its text, hence the absolute tolerances
            assert written.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), rel=1e-10, abs=1e-8)
            np.testing.assert_allclose(written.get_forces(), atoms.get_forces(), atol=1e-8)
            for key, value in info.items():
                assert written.info[key] == value  # the flags are written with the results


def molecule_with_charges(seed: int):
    from ase.build import molecule

    atoms = molecule("H2O") + molecule("H2O")  # a water dimer: H and O, known to every input example
    atoms.positions[3:] += [2.9, 0.3, 0.1]
    atoms.rattle(0.05, seed=seed)
    atoms.set_initial_charges(np.random.default_rng(seed).uniform(-0.5, 0.5, len(atoms)))
    return atoms


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("variant", ["--variant", "ccsdt"], "--variant: the model has no variant 'ccsdt' of 'energy' (available: alt)"),
        ("coulomb", ["--variant", "alt"], "--variant: the model has no variant 'alt' of 'energy' (available: none)"),
        ("charge-spin", ["--spin", "1"], "the model needs the total charge and atoms.info has no 'charge'"),
        ("charge-spin", ["--charge", "0"], "the model needs the spin multiplicity and atoms.info has no 'spin'"),
        (
            "coulomb",
            ["--charge", "1"],
            "--charge is for models that request total_charge, and this one requests charges: leave --charge out",
        ),
        ("coulomb", [], "the model needs per-atom charges and these atoms have none"),
    ],
)
def test_input_and_variant_errors_exit_2(input_models, tmp_path, capsys, model, options, message):
    from ase.build import molecule

    ase.io.write(tmp_path / "in.xyz", molecule("H2O"))
    status = main(["eval", input_models[model], str(tmp_path / "in.xyz"), "-o", str(tmp_path / "out.xyz"), *options])
    error = capsys.readouterr().err
    assert status == 2, error
    assert error.startswith("atomplug: error:") and message in error, error
    assert error.count("\n") == 1
    assert not (tmp_path / "out.xyz").exists()


def test_crosscheck_refuses_an_unknown_variant_before_any_engine(input_models, tmp_path, capsys):
    from ase.build import molecule

    ase.io.write(tmp_path / "in.xyz", molecule("CH3OH"))
    status = main(["crosscheck", input_models["variant"], str(tmp_path / "in.xyz"), "--variant", "ccsdt", "-q"])
    error = capsys.readouterr().err
    assert status == 2
    assert "atomplug: error: --variant: the model has no variant 'ccsdt' of 'energy' (available: alt)" in error
