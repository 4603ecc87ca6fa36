"""AtomplugCalculator against ASE's own Lennard-Jones and torchani's own ASE calculator."""

import logging

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lj import LennardJones
from ase.filters import FrechetCellFilter
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from structures import (
    AR_CUTOFF,
    AR_EPSILON,
    AR_LATTICE,
    AR_SIGMA,
    NVE_DRIFT_TOLERANCE,
    displaced_triclinic_argon,
    linear_drift,
    water_box,
)

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import load_model

# ASE >= 3.26 renamed MaxwellBoltzmannDistribution
thermalize = (
    getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
)


def relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def lj_calc(lj_model_path):
    return AtomplugCalculator(lj_model_path)


def ase_lj():
    return LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, rc=AR_CUTOFF, smooth=False)


# ---- physics against ASE's native implementation -----------------------------------------------


@pytest.mark.parametrize("seed", [7, 11])
def test_lj_matches_ase_lennard_jones(lj_model_path, seed):
    atoms = displaced_triclinic_argon(seed=seed)
    reference = atoms.copy()
    reference.calc = ase_lj()
    atoms.calc = AtomplugCalculator(lj_model_path)
    for name in ("energy", "energies", "forces", "stress", "stresses"):
        ours, theirs = atoms.calc.get_property(name, atoms), reference.calc.get_property(name, reference)
        assert np.shape(ours) == np.shape(theirs), name
        assert relative(ours, theirs) < 1e-10, f"{name}: {relative(ours, theirs):.2e}"
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]
    np.testing.assert_allclose(atoms.calc.results["stresses"].sum(axis=0), atoms.get_stress(), rtol=1e-12, atol=1e-16)


def test_lj_matches_ase_on_a_cluster(lj_model_path):
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2), seed=3)
    atoms.pbc = False
    reference = atoms.copy()
    reference.calc = ase_lj()
    atoms.calc = AtomplugCalculator(lj_model_path)
    assert relative(atoms.get_potential_energy(), reference.get_potential_energy()) < 1e-10
    assert relative(atoms.get_forces(), reference.get_forces()) < 1e-10
    assert relative(atoms.get_potential_energies(), reference.get_potential_energies()) < 1e-10


def test_non_conservative_outputs_match_autograd(lj_model_path):
    atoms = displaced_triclinic_argon(seed=5)
    conservative = AtomplugCalculator(lj_model_path)
    direct = AtomplugCalculator(lj_model_path, non_conservative=True)
    reference = conservative.get_property("forces", atoms), conservative.get_property("stress", atoms)
    ours = direct.get_property("forces", atoms), direct.get_property("stress", atoms)
    assert relative(ours[0], reference[0]) < 1e-12
    assert relative(ours[1], reference[1]) < 1e-12
    with pytest.raises(PropertyNotImplementedError, match="per-atom stresses"):
        direct.get_property("stresses", atoms)


# ---- ANI-1x against torchani's own ASE calculator -------------------------------------------


@pytest.fixture(scope="module")
def torchani_calc():
    from atomplug.examples.ani1x import torchani_reference

    return torchani_reference().ase()


@pytest.mark.parametrize("structure", ["molecule", "water box"])
def test_ani1x_matches_torchani_ase_calculator(ani1x_path, torchani_calc, structure):
    if structure == "molecule":
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=3)
        properties = ("energy", "forces")
    else:
        atoms = water_box(16, seed=2)
        properties = ("energy", "forces", "stress")
    reference = atoms.copy()
    reference.calc = torchani_calc
    atoms.calc = AtomplugCalculator(ani1x_path)
    getters = {"energy": Atoms.get_potential_energy, "forces": Atoms.get_forces, "stress": Atoms.get_stress}
    for name in properties:
        error = relative(getters[name](atoms), getters[name](reference))
        assert error < 1e-6, f"{structure} {name}: {error:.2e}"


def test_ani1x_extra_outputs_and_uncertainty_warning(ani1x_path):
    atoms = molecule("CH4")
    calc = AtomplugCalculator(
        ani1x_path, additional_outputs=["energy_uncertainty", "energy_ensemble"], uncertainty_threshold=0.0
    )
    atoms.calc = calc
    with pytest.warns(RuntimeWarning, match="energy uncertainty .* exceeds the threshold 0 eV for CH4"):
        energy = atoms.get_potential_energy()
    members = calc.results["energy_ensemble"]
    assert members.shape == (8,)
    assert members.mean() == pytest.approx(energy, rel=1e-12)
    assert calc.results["energy_uncertainty"] == pytest.approx(members.std(ddof=1), rel=1e-9)
    quiet = AtomplugCalculator(ani1x_path, uncertainty_threshold=10.0)
    with warnings_as_errors():
        quiet.get_potential_energy(atoms)


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


# ---- dynamics and optimisation --------------------------------------------------------------


def test_nve_energy_drift(lj_model_path):
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((3, 3, 3))
    assert len(atoms) == 108
    thermalize(atoms, temperature_K=50, rng=np.random.default_rng(1))
    Stationary(atoms)
    atoms.calc = AtomplugCalculator(lj_model_path, skin=1.0)
    dynamics = VelocityVerlet(atoms, timestep=2 * units.fs)
    energies = []
    dynamics.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dynamics.run(1000)
    energies = np.array(energies) / len(atoms)
    drift = linear_drift(energies)
    print(
        f"\nNVE 108 Ar, 1000 x 2 fs: drift {drift:.2e} eV/atom, fluctuation {energies.std():.2e} eV/atom, "
        f"{atoms.calc.runner.cache.n_builds} neighbor-list builds"
    )
    assert drift < NVE_DRIFT_TOLERANCE
    assert atoms.calc.runner.cache.n_builds < 200, "the Verlet skin saves most rebuilds"


def lj_lattice_constant_by_scan(calc) -> float:
    """The fcc lattice constant minimising the LJ energy, by a scan refined to 1e-6 A."""

    def energy(a):
        atoms = bulk("Ar", "fcc", a=a)
        atoms.calc = calc
        return atoms.get_potential_energy()

    low, high = 5.0, 5.6
    for _ in range(4):  # successively finer grids
        grid = np.linspace(low, high, 41)
        best = int(np.argmin([energy(a) for a in grid]))
        step = grid[1] - grid[0]
        low, high = grid[best] - step, grid[best] + step
    # a parabola through the last three points
    a = np.array([low, 0.5 * (low + high), high])
    coefficients = np.polyfit(a, [energy(x) for x in a], 2)
    return -coefficients[1] / (2 * coefficients[0])


def test_bfgs_cell_relaxation_finds_lj_lattice_constant(lj_model_path):
    calc = AtomplugCalculator(lj_model_path)
    scanned = lj_lattice_constant_by_scan(calc)
    atoms = bulk("Ar", "fcc", a=5.5, cubic=True)
    atoms.calc = calc
    optimizer = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert optimizer.run(fmax=1e-6, steps=200)
    relaxed = atoms.cell.lengths()[0]
    print(f"\nLJ fcc lattice constant: scan {scanned:.6f} A, BFGS + FrechetCellFilter {relaxed:.6f} A")
    np.testing.assert_allclose(atoms.cell.lengths(), relaxed, atol=1e-8)
    assert abs(relaxed - scanned) < 1e-4


# ---- ASE semantics ---------------------------------------------------------------------------


def test_only_what_is_asked_is_computed_and_results_are_cached(lj_model_path):
    calc = AtomplugCalculator(lj_model_path)
    calls = []
    original = calc.runner.run

    def counting_run(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    calc.runner.run = counting_run
    atoms = displaced_triclinic_argon()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert set(calc.results) == {"energy", "free_energy"}
    assert calls[-1]["forces"] is False and calls[-1]["virial"] is False, "an energy costs no backward pass"
    atoms.get_potential_energy()
    assert len(calls) == 1, "same atoms: no new calculation"
    # One MD step as ASE's integrators ask for it: forces, stress, energy -> one model call.
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_potential_energy()
    assert len(calls) == 2 and calls[-1]["forces"] is True and calls[-1]["virial"] is True
    assert calls[-1]["atomic_virial"] is False, "per-atom virials only when asked"
    cluster = displaced_triclinic_argon(repeat=(2, 2, 2))
    cluster.pbc = False
    calc.get_forces(cluster)
    assert calls[-1]["virial"] is False and "stress" not in calc.results, "no stress without a 3D cell"


def test_batched_compute_equals_one_by_one(lj_model_path):
    # Equal to rounding, not bit for bit: torch's scatter-add kernels (the backward of the pair
    # gathers) may sum a given atom's pair terms in another order for another tensor size.
    frames = [displaced_triclinic_argon(repeat=(2, 2, 2), seed=s) for s in range(3)]
    frames.append(displaced_triclinic_argon(repeat=(2, 3, 2), seed=9))
    cluster = displaced_triclinic_argon(repeat=(2, 2, 1), seed=4)
    cluster.pbc = False
    slab = displaced_triclinic_argon(repeat=(2, 2, 2), seed=6)
    slab.pbc = [True, True, False]
    frames += [cluster, slab]
    calc = AtomplugCalculator(lj_model_path, skin=0.0)
    properties = ["energy", "energies", "forces"]
    batched = calc.compute(frames, properties, batch_size=4, progress=False)
    assert len(batched) == len(frames)
    for atoms, result in zip(frames, batched):
        calc.calculate(atoms, properties)
        for name in properties:
            np.testing.assert_allclose(result[name], calc.results[name], rtol=1e-13, atol=1e-16, err_msg=name)
    periodic = [f for f in frames if f.pbc.all()]
    stresses = calc.compute(periodic, ["stress", "stresses"], batch_size=3, progress=False)
    for atoms, result in zip(periodic, stresses):
        calc.calculate(atoms, ["stress", "stresses"])
        np.testing.assert_allclose(result["stress"], calc.results["stress"], rtol=1e-13, atol=1e-18)
        np.testing.assert_allclose(result["stresses"], calc.results["stresses"], rtol=1e-13, atol=1e-18)


def test_run_any_output_with_selected_atoms(lj_model_path):
    calc = AtomplugCalculator(lj_model_path)
    atoms = displaced_triclinic_argon()
    everything = calc.run(atoms, ["energy/per_atom"])
    selected = calc.run(atoms, ["energy", "energy/per_atom"], selected_atoms=[0, 5, 7])
    np.testing.assert_allclose(selected["energy/per_atom"], everything["energy/per_atom"][[0, 5, 7]], rtol=1e-14)
    assert selected["energy"][0, 0] == pytest.approx(everything["energy/per_atom"][[0, 5, 7]].sum(), rel=1e-13)


def test_description_and_citation(lj_model_path, caplog):
    from atomplug.ase_calculator import calculator

    calculator._CITED.clear()
    with caplog.at_level(logging.INFO, logger="atomplug"):
        calc = AtomplugCalculator(lj_model_path)
        AtomplugCalculator(load_model(lj_model_path))
    citations = [r for r in caplog.records if "please cite" in r.getMessage()]
    assert len(citations) == 1 and "Jones" in citations[0].getMessage()
    description = calc.todict()
    assert description["model_name"] == "lennard-jones" and description["model"] == lj_model_path
    assert "lennard-jones" in repr(calc)


# ---- bad input -------------------------------------------------------------------------------


def test_unknown_element_names_element_and_known_ones(lj_calc):
    with pytest.raises(ValueError, match=r"element\(s\) H \(1\), O \(8\) unknown to this model, which knows Ar \(18\)"):
        lj_calc.get_potential_energy(molecule("H2O"))


def test_empty_atoms(lj_calc):
    with pytest.raises(ValueError, match="empty"):
        lj_calc.get_potential_energy(Atoms())


def test_undeclared_output(lj_model_path):
    with pytest.raises(ValueError, match="'dipole' is not declared .* it declares: energy"):
        AtomplugCalculator(lj_model_path, additional_outputs=["dipole"])
    with pytest.raises(ValueError, match="'energy_uncertainty' is not declared"):
        AtomplugCalculator(lj_model_path).run(bulk("Ar"), ["energy_uncertainty"])
    with pytest.raises(ValueError, match="energy_uncertainty"):
        AtomplugCalculator(lj_model_path, uncertainty_threshold=0.1)


def test_stress_of_non_periodic_system(lj_calc):
    cluster = displaced_triclinic_argon(repeat=(2, 2, 2))
    cluster.pbc = False
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three directions"):
        lj_calc.get_stress(cluster)
    cluster.pbc = [True, True, False]
    with pytest.raises(PropertyNotImplementedError):
        lj_calc.get_property("stresses", cluster)


def test_nan_positions_and_missing_model(lj_calc, tmp_path):
    atoms = displaced_triclinic_argon()
    atoms.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lj_calc.get_potential_energy(atoms)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AtomplugCalculator(str(tmp_path / "missing.pt"))
