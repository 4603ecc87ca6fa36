"""Derivatives of a model's output, written once and compiled into every exported archive.

Forces are -dY/dr; the virial is W = -dY/dε for a homogeneous strain ε applied to positions and
cell (so for pair forces W = sum r_ij ⊗ f_ij); the per-atom virial splits each pair's
-r_ij ⊗ dY/dr_ij half to i and half to j. ASE's stress is -W / V. These functions are TorchScript
so that LAMMPS and PLUMED (C++) run exactly the code path ASE and i-PI run.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import Tensor


def strained(positions: Tensor, cells: Tensor, strain: Tensor, system_of_atom: Tensor, n_systems: int):
    """Apply the deformation (1 + strain[s]) to every atom and cell of system s (row vectors)."""
    eye = torch.eye(3, dtype=cells.dtype, device=cells.device)
    deformation = eye.unsqueeze(0) + strain
    if n_systems == 1:
        new_positions = positions @ deformation[0]
    else:
        new_positions = torch.bmm(positions.unsqueeze(1), deformation.index_select(0, system_of_atom)).squeeze(1)
    new_cells = torch.bmm(cells, deformation)
    return new_positions, new_cells


def pair_vectors(
    positions: Tensor, cells: Tensor, pairs: Tensor, shifts: Tensor, system_of_atom: Tensor, n_systems: int
) -> Tensor:
    """r_j - r_i + shift @ cell for every pair, differentiable w.r.t. positions and cells."""
    vectors = positions.index_select(0, pairs[:, 1]) - positions.index_select(0, pairs[:, 0])
    shifts = shifts.to(positions.dtype)
    if n_systems == 1:
        return vectors + shifts @ cells[0]
    pair_cells = cells.index_select(0, system_of_atom.index_select(0, pairs[:, 0]))
    return vectors + torch.bmm(shifts.unsqueeze(1), pair_cells).squeeze(1)


def atomic_virial_from_pairs(
    n_atoms: int, pairs: List[Tensor], vectors: List[Tensor], gradients: List[Optional[Tensor]], dtype: torch.dtype
) -> Tensor:
    """Per-atom virial: each pair's -r ⊗ dY/dr shared equally by its two atoms.

    Sums to the global virial when the model depends on positions only through pair vectors.
    """
    device = vectors[0].device if len(vectors) > 0 else torch.device("cpu")
    result = torch.zeros((n_atoms, 3, 3), dtype=dtype, device=device)
    for index in range(len(pairs)):
        gradient = gradients[index]
        if gradient is not None:
            vector = vectors[index].detach().to(dtype)
            contribution = -0.5 * vector.unsqueeze(2) * gradient.to(dtype).unsqueeze(1)
            result.index_add_(0, pairs[index][:, 0], contribution)
            result.index_add_(0, pairs[index][:, 1], contribution)
    return result


def stress_from_virial_array(virial: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """ASE's stress -W / V for a 3x3 virial or a stack of per-atom virials [n, 3, 3] (numpy)."""
    volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64))))
    if volume == 0.0:
        raise ValueError("the cell has zero volume: stress is only defined for a 3D periodic cell")
    return -np.asarray(virial, dtype=np.float64) / volume


def virial_from_forces(positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """W = sum_i r_i ⊗ F_i (numpy, 3x3) from positions [n, 3] and forces [n, 3]: the virial of an
    isolated structure (no periodic images), where it equals the pair virial."""
    return np.asarray(positions, dtype=np.float64).T @ np.asarray(forces, dtype=np.float64)
