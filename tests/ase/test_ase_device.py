"""AtomplugCalculator with the neighbor lists on the model's device (issue 19).

`device="cuda"` builds the lists on the GPU by default (`neighbor_backend="auto"`); the same code
runs on a CPU with `neighbor_backend="torch"`. Either way every step must give the host path's
numbers: bit for bit on the CPU, to 1e-12 relative on a GPU. The `cuda` cases skip without a GPU
and run in `make gpu-check`.
"""

import numpy as np
import pytest
from ase import units
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from devices import DEVICES
from structures import displaced_triclinic_argon, water_box

from atomplug.ase_calculator import AtomplugCalculator

PROPERTIES = ("energy", "forces", "stress")


def relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def evaluate(calculator, atoms):
    """Energy, forces and stress of `atoms` from one model call (forces asked first)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    forces = atoms.get_forces()
    return {"energy": atoms.get_potential_energy(), "forces": forces, "stress": atoms.get_stress()}


def on_device(model_path, device, **options):
    calculator = AtomplugCalculator(model_path, device=device, neighbor_backend="torch", **options)
    assert calculator.runner.neighbor_backend == "torch"
    return calculator


@pytest.mark.parametrize("device", DEVICES)
def test_md_with_the_lists_on_the_device_matches_the_host_lists(lj_model_path, device):
    """NVE argon (256 atoms, a cell wider than two cutoffs): along the host calculator's
    trajectory, the device calculator gives the same energy, forces and stress at every step and
    rebuilds its lists at the same steps."""
    atoms = displaced_triclinic_argon(repeat=(4, 4, 4))
    rng = np.random.default_rng(2)
    atoms.set_momenta(rng.normal(scale=0.3, size=(len(atoms), 3)))
    Stationary(atoms)
    atoms.calc = AtomplugCalculator(lj_model_path, skin=0.5)
    twin = atoms.copy()
    twin.calc = on_device(lj_model_path, device, skin=0.5)
    worst = [0.0]

    def compare():
        twin.positions = atoms.positions
        # forces first, as the dynamics asked: one model call gives all three
        for name in ("forces", "energy", "stress"):
            difference = relative(twin.calc.get_property(name, twin), atoms.calc.get_property(name, atoms))
            worst[0] = max(worst[0], difference)
        assert twin.calc.runner.cache.n_builds == atoms.calc.runner.cache.n_builds

    dynamics = VelocityVerlet(atoms, timestep=4 * units.fs)
    dynamics.attach(compare, interval=1)
    dynamics.run(40)
    assert atoms.calc.runner.cache.n_builds > 1, "the trajectory went past the skin"
    assert worst[0] <= (0.0 if device == "cpu" else 1e-12), worst[0]


@pytest.mark.parametrize("device", DEVICES)
def test_ani1x_water_with_the_lists_on_the_device(ani1x_path, device):
    """ANI-1x on 192 atoms of water (the issue's smallest benchmark box), a few displaced frames:
    the host path's numbers."""
    atoms = water_box(64, seed=3)
    reference = AtomplugCalculator(ani1x_path)
    calculator = on_device(ani1x_path, device)
    rng = np.random.default_rng(4)
    worst = 0.0
    for _ in range(3):
        atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
        expected = evaluate(reference, atoms)
        result = evaluate(calculator, atoms)
        worst = max(worst, *(relative(result[name], expected[name]) for name in PROPERTIES))
    assert worst <= (0.0 if device == "cpu" else 1e-12), worst
