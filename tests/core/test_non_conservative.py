"""The one non-conservative rule (AtomisticModel._virial_source), checked with a planted model
whose direct forces and stress differ from its energy's derivatives, so that each source can be
told apart: -sigma V for 3D periodic structures, sum r (x) f for isolated ones, the energy's
strain derivative for slabs and for a subset of atoms."""

from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase import Atoms

from atomplug.core import (
    ModelCapabilities,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    Structure,
    System,
    export,
)

STRESS = [[1.0, 0.2, 0.0], [0.2, 2.0, -0.1], [0.0, -0.1, 3.0]]  # eV/A^3, planted


class Planted(torch.nn.Module):
    """E = 0.1 sum over pairs |r_ij|^2 (per atom: half each); direct forces 2 r_i; direct stress STRESS."""

    def __init__(self):
        super().__init__()
        self.options = NeighborListOptions(2.5, False, True)
        self.register_buffer("stress", torch.tensor(STRESS, dtype=torch.float64).reshape(1, 9))

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.options]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        energies: List[torch.Tensor] = []
        forces: List[torch.Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(self.options)
            pair_energy = 0.1 * (neighbors.vectors**2).sum(dim=1)
            atomic = torch.zeros(system.positions.shape[0], dtype=system.positions.dtype)
            atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair_energy)
            atomic = atomic.index_add(0, neighbors.pairs[:, 1], 0.5 * pair_energy)
            energies.append(atomic)
            forces.append(2.0 * system.positions)
        atomic = torch.cat(energies).unsqueeze(1)
        results: Dict[str, torch.Tensor] = {}
        if "energy" in outputs:
            if outputs["energy"].per_atom:
                results["energy"] = atomic
            else:
                results["energy"] = torch.stack([e.sum() for e in energies]).unsqueeze(1)
        if "non_conservative_forces" in outputs:
            results["non_conservative_forces"] = torch.cat(forces)
        if "non_conservative_stress" in outputs:
            results["non_conservative_stress"] = self.stress.repeat(len(systems), 1)
        return results


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("planted") / "planted.pt")
    capabilities = ModelCapabilities(
        outputs={
            "energy": ModelOutput(quantity="energy", unit="eV", per_atom=True),
            "non_conservative_forces": ModelOutput(
                quantity="force", unit="eV/Angstrom", per_atom=True, properties=["x", "y", "z"]
            ),
            "non_conservative_stress": ModelOutput(
                quantity="pressure",
                unit="eV/Angstrom^3",
                per_atom=False,
                properties=["xx", "xy", "xz", "yx", "yy", "yz", "zx", "zy", "zz"],
            ),
        },
        atomic_types=[18],
        interaction_range=2.5,
        length_unit="Angstrom",
        dtype="float64",
    )
    export(Planted(), path, capabilities)
    return ModelRunner(path)


def cluster(pbc) -> Structure:
    rng = np.random.default_rng(7)
    atoms = Atoms("Ar6", positions=rng.uniform(0.0, 3.0, (6, 3)), cell=np.diag([4.0, 4.5, 5.0]), pbc=pbc)
    return Structure.from_atoms(atoms)


def test_periodic_virial_is_minus_stress_times_volume(runner):
    structure = cluster(True)
    result = runner.run([structure], ["energy"], forces=True, virial=True, non_conservative=True)
    np.testing.assert_allclose(result["forces"], 2.0 * structure.positions, rtol=1e-14)
    volume = abs(np.linalg.det(structure.cell))
    np.testing.assert_allclose(result["virial"][0], -np.array(STRESS) * volume, rtol=1e-14)


def test_isolated_virial_is_the_virial_of_the_direct_forces(runner):
    structure = cluster(False)
    result = runner.run([structure], ["energy"], forces=True, virial=True, non_conservative=True)
    forces = 2.0 * structure.positions
    np.testing.assert_allclose(result["virial"][0], structure.positions.T @ forces, rtol=1e-14)


@pytest.mark.parametrize("case", ["slab", "selection"])
def test_otherwise_the_virial_is_the_energy_strain_derivative(runner, case):
    structure = cluster([True, True, False] if case == "slab" else True)
    selected = [0, 2, 3] if case == "selection" else None
    direct = runner.run(
        [structure], ["energy"], forces=True, virial=True, non_conservative=True, selected_atoms=selected
    )
    gradient = runner.run([structure], ["energy"], forces=True, virial=True, selected_atoms=selected)
    np.testing.assert_allclose(direct["virial"], gradient["virial"], rtol=1e-13)
    assert not np.allclose(direct["forces"], gradient["forces"])  # the planted forces differ
    expected = 2.0 * structure.positions
    if selected is not None:
        others = np.setdiff1d(np.arange(len(structure)), selected)
        expected[others] = 0.0  # atoms outside the selection (LAMMPS ghosts) get no direct force
    np.testing.assert_allclose(direct["forces"], expected, rtol=1e-14)


def test_a_batch_takes_each_structure_s_own_volume(runner):
    first, second = cluster(True), cluster(True)
    second.cell = second.cell * 1.1
    result = runner.run([first, second], ["energy"], forces=True, virial=True, non_conservative=True)
    for index, structure in enumerate((first, second)):
        volume = abs(np.linalg.det(structure.cell))
        np.testing.assert_allclose(result["virial"][index], -np.array(STRESS) * volume, rtol=1e-14)


def test_a_model_without_direct_forces_is_refused(tmp_path):
    bare = ModelRunner(_energy_only(tmp_path))
    with pytest.raises(ValueError, match="per-atom 'non_conservative_forces' output, which this model does not"):
        bare.run([cluster(True)], ["energy"], forces=True, non_conservative=True)


def _energy_only(tmp_path) -> str:
    path = str(tmp_path / "energy-only.pt")
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[18],
        interaction_range=2.5,
        length_unit="Angstrom",
        dtype="float64",
    )
    export(Planted(), path, capabilities)
    return path
