"""Frames of reference: rotating a structure into the orientation LAMMPS and i-PI require, and
bringing vectors and tensors computed there back to the structure's own frame.

LAMMPS (a restricted triclinic box) and i-PI (an upper-triangular h) both want the first cell
vector along x and the second in the xy plane. Energies are invariant; forces rotate as vectors
and the virial as a rank-2 tensor.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def standard_orientation(atoms) -> Tuple[object, np.ndarray]:
    """The structure rotated so that a lies along x and b in the xy plane (LAMMPS' and i-PI's cell
    convention), with the rotation: returns (rotated atoms, R) with r_engine = R r.

    Left-handed cells cannot be rotated into that form; ValueError says so.
    """
    if not atoms.pbc.any():
        return atoms.copy(), np.eye(3)
    cell = atoms.cell.array
    if np.linalg.det(cell) <= 0.0:
        raise ValueError("the cell is left-handed (det < 0); reorder its vectors to make it right-handed")
    a, b, c = cell
    x = a / np.linalg.norm(a)
    y = b - np.dot(b, x) * x
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    rotation = np.array([x, y, z])
    rotated = atoms.copy()
    rotated.set_cell(cell @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    rotated.set_cell(np.tril(rotated.cell.array), scale_atoms=False)  # drop rounding above the diagonal
    return rotated, rotation


def back_to_structure(rotation: np.ndarray, forces: np.ndarray, virial: Optional[np.ndarray]):
    """Forces and virial computed in the rotated frame, expressed in the structure's frame."""
    forces = forces @ rotation
    if virial is not None:
        virial = rotation.T @ virial @ rotation
    return forces, virial
