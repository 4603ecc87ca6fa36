"""Reference structures and Lennard-Jones parameters shared by the tests."""

import numpy as np
from ase import Atoms
from ase.build import bulk

AR_EPSILON = 0.0104  # eV
AR_SIGMA = 3.40  # Angstrom
AR_CUTOFF = 8.5  # Angstrom
AR_LATTICE = 5.26  # Angstrom, fcc


def displaced_triclinic_argon(repeat=(3, 3, 3), amplitude=0.15, seed=7) -> Atoms:
    """A randomly displaced, sheared fcc argon supercell: periodic and triclinic."""
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    shear = np.eye(3) + np.array([[0.0, 0.06, -0.04], [0.03, 0.0, 0.05], [0.02, -0.03, 0.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions += rng.uniform(-amplitude, amplitude, size=atoms.positions.shape)
    return atoms
