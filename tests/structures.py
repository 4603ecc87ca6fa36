"""Reference structures and Lennard-Jones parameters shared by the tests."""

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

AR_EPSILON = 0.0104  # eV
AR_SIGMA = 3.40  # Angstrom
AR_CUTOFF = 8.5  # Angstrom
AR_LATTICE = 5.26  # Angstrom, fcc
WATER_MASS = 18.015  # g/mol
NVE_DRIFT_TOLERANCE = 1e-6  # eV/atom over 1,000 steps (issue 8), in every engine that integrates


def linear_drift(values: np.ndarray) -> float:
    """|slope of a least-squares line| x number of samples: the change over a run with the
    fluctuations averaged out (how NVE energy drift is measured in every engine's test)."""
    values = np.asarray(values, dtype=float)
    return float(abs(np.polyfit(np.arange(len(values)), values, 1)[0]) * len(values))


def displaced_triclinic_argon(repeat=(3, 3, 3), amplitude=0.15, seed=7) -> Atoms:
    """A randomly displaced, sheared fcc argon supercell: periodic and triclinic."""
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    shear = np.eye(3) + np.array([[0.0, 0.06, -0.04], [0.03, 0.0, 0.05], [0.02, -0.03, 0.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions += rng.uniform(-amplitude, amplitude, size=atoms.positions.shape)
    return atoms


def water_box(n_molecules: int, seed: int, density: float = 1.0) -> Atoms:
    """`n_molecules` randomly placed and oriented waters in a cubic periodic box (g/cm^3)."""
    rng = np.random.default_rng(seed)
    length = (n_molecules * WATER_MASS / (0.602214076 * density)) ** (1.0 / 3.0)
    template = molecule("H2O")
    template = template.positions - template.positions[0]  # O at the origin
    placed = np.zeros((0, 3))
    while placed.shape[0] < 3 * n_molecules:
        rotation, upper = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = rotation * np.sign(np.diag(upper))
        candidate = rng.random(3) * length + template @ rotation.T
        if placed.shape[0] > 0:
            delta = candidate[:, None, :] - placed[None, :, :]
            delta -= length * np.round(delta / length)
            if np.linalg.norm(delta, axis=2).min() < 1.8:
                continue
        placed = np.concatenate([placed, candidate])
    atoms = Atoms("OH2" * n_molecules, positions=placed, cell=[length] * 3, pbc=True)
    atoms.wrap()
    return atoms


# ---- H, C, O structures for the message-passing example (a short 2.5 A cutoff) ------------------


def hco_liquid(n_molecules: int = 24, seed: int = 11) -> Atoms:
    """A periodic molecular liquid: random waters, every third oxygen turned into a carbon."""
    atoms = water_box(n_molecules, seed=seed)
    numbers = atoms.numbers.copy()
    oxygens = np.flatnonzero(numbers == 8)
    numbers[oxygens[::3]] = 6
    atoms.numbers = numbers
    atoms.rattle(0.05, seed=seed)
    return atoms


def triclinic_hco_liquid() -> Atoms:
    atoms = hco_liquid(seed=12)
    shear = np.array([[1.0, 0.0, 0.0], [0.18, 1.0, 0.0], [-0.12, 0.22, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.wrap()
    return atoms


def hco_slab() -> Atoms:
    atoms = hco_liquid(seed=13)
    atoms.pbc = [True, True, False]
    return atoms


def hco_cluster() -> Atoms:
    """Isolated: ethanol and a water, close enough to interact through a few messages."""
    atoms = molecule("CH3CH2OH")
    water = molecule("H2O")
    water.translate([0.0, 2.9, 0.4])
    atoms += water
    atoms.rattle(0.02, seed=3)
    return atoms


def hco_tiny_box() -> Atoms:
    """A triclinic box smaller than one cutoff in places and far smaller than the range: atoms
    meet many periodic images of themselves and of each other."""
    atoms = Atoms(
        "COH",
        positions=[[0.1, 0.2, 0.1], [1.25, 0.35, 0.3], [0.4, 1.5, 1.4]],
        cell=[[2.9, 0.0, 0.0], [0.5, 3.0, 0.0], [-0.3, 0.4, 3.1]],
        pbc=True,
    )
    return atoms
