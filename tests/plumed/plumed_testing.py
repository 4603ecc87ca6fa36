"""Helpers for the PLUMED tests: trajectories, `plumed driver` runs, and models with known natives."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.examples.coordination import Coordination
from atomplug.plumed_cv import plumed_environment, plumed_program

FMT = "%.15e"


def write_xyz(path: str, frames: Sequence[np.ndarray], box: Optional[np.ndarray]) -> None:
    """A `plumed driver --ixyz` trajectory (positions in PLUMED units); box rows are cell vectors."""
    with open(path, "w") as handle:
        for positions in frames:
            handle.write(f"{len(positions)}\n")
            if box is None:
                handle.write("0 0 0\n")
            else:
                handle.write(" ".join("%.12f" % v for v in np.asarray(box).reshape(-1)) + "\n")
            for position in positions:
                handle.write("X %.12f %.12f %.12f\n" % tuple(position))


def random_frames(
    n_atoms: int, n_frames: int, extent: float, seed: int, min_distance: float = 0.08
) -> List[np.ndarray]:
    """Random positions in [0, extent)^3, no two atoms closer than min_distance (no 0/0 anywhere)."""
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < n_frames:
        positions = rng.uniform(0.0, extent, (n_atoms, 3))
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(n_atoms) * 1e9
        if distances.min() > min_distance:
            frames.append(positions)
    return frames


def run_driver(directory: str, plumed_input: str, trajectory: str, *extra: str) -> subprocess.CompletedProcess:
    """`plumed driver` on `trajectory` with `plumed_input` (text); returns the completed process."""
    input_path = os.path.join(directory, "plumed.dat")
    with open(input_path, "w") as handle:
        handle.write(plumed_input)
    command = [plumed_program(), "driver", "--plumed", input_path, "--ixyz", trajectory, *extra]
    return subprocess.run(command, cwd=directory, env=plumed_environment(), capture_output=True, text=True, timeout=120)


def check_run(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"plumed driver failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )


def read_colvar(path: str) -> Dict[str, np.ndarray]:
    with open(path) as handle:
        header = handle.readline().split()[2:]
    data = np.atleast_2d(np.loadtxt(path, comments="#"))
    return {name: data[:, k] for k, name in enumerate(header)}


def read_forces(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """`--dump-forces` file: per frame, the virial (comment line) and the forces."""
    virials, forces = [], []
    with open(path) as handle:
        lines = handle.read().splitlines()
    position = 0
    while position < len(lines):
        n_atoms = int(lines[position])
        virials.append([float(v) for v in lines[position + 1].split()])
        forces.append([[float(v) for v in line.split()[1:4]] for line in lines[position + 2 : position + 2 + n_atoms]])
        position += 2 + n_atoms
    return np.array(virials), np.array(forces)


def assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float = 1e-8, what: str = "") -> float:
    """|ours - reference| <= rtol * max|reference|; returns the relative difference found."""
    ours = np.asarray(ours, dtype=float)
    reference = np.asarray(reference, dtype=float)
    assert ours.shape == reference.shape, (what, ours.shape, reference.shape)
    scale = max(float(np.max(np.abs(reference))), 1e-300)
    difference = float(np.max(np.abs(ours - reference))) / scale
    assert difference <= rtol, f"{what}: relative difference {difference:.2e} > {rtol:.0e}"
    return difference


# ---- test models ---------------------------------------------------------------------------------


class PairDistance(torch.nn.Module):
    """The distance between the atom of type `first` and the atom of type `second` (one of each),
    from a half neighbor list: a model equal to PLUMED's DISTANCE ATOMS=a,b."""

    def __init__(self, cutoff: float, first: int, second: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.first = int(first)
        self.second = int(second)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        values: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            types_i = system.types.index_select(0, neighbors.pairs[:, 0])
            types_j = system.types.index_select(0, neighbors.pairs[:, 1])
            mask = ((types_i == self.first) & (types_j == self.second)) | (
                (types_i == self.second) & (types_j == self.first)
            )
            distances = torch.linalg.vector_norm(neighbors.vectors, dim=1)
            values.append((distances * mask.to(distances.dtype)).sum().reshape(1))
        return {"test::distance": torch.cat(values).reshape(-1, 1)}


def export_distance(
    path: str, cutoff: float = 9.0, types: Tuple[int, int] = (6, 8), length_unit: str = "Angstrom"
) -> None:
    """Distance model: output 'test::distance', quantity length, in Angstrom (converted by the entry point)."""
    capabilities = ModelCapabilities(
        outputs={"test::distance": ModelOutput(quantity="length", unit=length_unit, per_atom=False)},
        atomic_types=list(types),
        interaction_range=cutoff,
        length_unit=length_unit,
    )
    export(PairDistance(cutoff, types[0], types[1]), path, capabilities, ModelMetadata(name="pair distance"))


class TwoCoordinations(torch.nn.Module):
    """features = [coordination with r0 = r0s[0], coordination with r0 = r0s[1]] (two properties)."""

    def __init__(self, r0s: Tuple[float, float], d_max: float, types_a: List[int], types_b: List[int]):
        super().__init__()
        self.first = Coordination(r0s[0], d_max, types_a, types_b)
        self.second = Coordination(r0s[1], d_max, types_a, types_b)
        self.d_max = float(d_max)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.d_max, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        first = self.first(systems, outputs, selected_atoms)["features"]
        second = self.second(systems, outputs, selected_atoms)["features"]
        return {"features": torch.cat([first, second], dim=1)}


def export_two_coordinations(path: str, properties: List[str], r0s=(3.0, 4.0), d_max: float = 8.0) -> None:
    capabilities = ModelCapabilities(
        outputs={"features": ModelOutput(quantity="", unit="", per_atom=False, properties=properties)},
        atomic_types=[1, 8],
        interaction_range=d_max,
        length_unit="Angstrom",
    )
    export(TwoCoordinations(r0s, d_max, [8], [1]), path, capabilities, ModelMetadata(name="two coordinations"))


def core_has_multi_property_gradients(model_path: str) -> bool:
    """Whether this atomplug core differentiates outputs with several properties (one per property)."""
    from atomplug.core import load_model

    module = load_model(model_path).module
    positions = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    try:
        module(
            positions,
            torch.tensor([8, 1], dtype=torch.int32),
            torch.zeros(1, 3, 3, dtype=torch.float64),
            torch.zeros(1, 3, dtype=torch.bool),
            torch.tensor([2]),
            [torch.tensor([[0, 1]])],
            [torch.zeros(1, 3, dtype=torch.int32)],
            ["features"],
            None,
            "features",
            True,
            False,
            False,
            "nm",
            "kJ/mol",
        )
    except torch.jit.Error as error:
        if "single-valued" in str(error):
            return False
        raise
    return True
