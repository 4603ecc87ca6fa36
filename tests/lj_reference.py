"""An independent numpy Lennard-Jones: explicit image loops, no shared code with atomplug."""

import itertools

import numpy as np


def lennard_jones_reference(positions, cell, pbc, epsilon, sigma, cutoff):
    """Energy, forces and virial (W = sum r_ij (x) f_ij) of LJ shifted to zero at the cutoff."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    n_atoms = len(positions)
    # a zero row of a non-periodic direction: stand in a perpendicular vector to measure heights
    geometry = cell.copy()
    for direction in range(3):
        if not pbc[direction] and not np.any(geometry[direction]):
            other = geometry[(direction + 1) % 3], geometry[(direction + 2) % 3]
            filler = np.cross(*other)
            geometry[direction] = filler if np.any(filler) else np.eye(3)[direction]
    ranges = []
    for direction in range(3):
        if pbc[direction]:
            normal = np.cross(geometry[(direction + 1) % 3], geometry[(direction + 2) % 3])
            height = abs(np.dot(geometry[direction], normal)) / np.linalg.norm(normal)
            extent = int(np.ceil(cutoff / height)) + 1
            ranges.append(range(-extent, extent + 1))
        else:
            ranges.append(range(0, 1))
    shift_energy = 4 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)
    energy = 0.0
    forces = np.zeros((n_atoms, 3))
    virial = np.zeros((3, 3))
    for shift in itertools.product(*ranges):
        offset = np.array(shift, dtype=np.float64) @ cell
        delta = positions[None, :, :] + offset - positions[:, None, :]  # r_j + offset - r_i
        distance = np.linalg.norm(delta, axis=2)
        mask = distance < cutoff
        if shift == (0, 0, 0):
            np.fill_diagonal(mask, False)
        i, j = np.nonzero(mask)
        r = distance[i, j]
        vec = delta[i, j]
        sr6 = (sigma / r) ** 6
        energy += 0.5 * np.sum(4 * epsilon * (sr6 * sr6 - sr6) - shift_energy)
        # dphi/dr; force on j from i is -dphi/dr * vec / r
        dphi = 4 * epsilon * (-12 * sr6 * sr6 + 6 * sr6) / r
        force_on_j = -(dphi / r)[:, None] * vec
        np.add.at(forces, j, 0.5 * force_on_j)
        np.add.at(forces, i, -0.5 * force_on_j)
        virial += 0.5 * np.einsum("pa,pb->ab", vec, force_on_j)
    return energy, forces, virial
