"""The i-PI client with the neighbor lists on the model's device (issue 19): one Verlet-skin
cache per bead on the device (DeviceTrajectoryCaches), the host path's numbers for every bead.
The `cuda` cases skip without a GPU and run in `make gpu-check`."""

import numpy as np
import pytest
from ase.geometry import cellpar_to_cell
from ase.units import Bohr
from devices import DEVICES
from ipi_harness import write_ipi_xyz
from structures import displaced_triclinic_argon

from atomplug.core.neighbors import DeviceNeighborListCache
from atomplug.ipi_driver.evaluator import IPIEvaluator


@pytest.mark.parametrize("device", DEVICES)
def test_interleaved_beads_on_the_device_match_the_host_path(lj_model_path, tmp_path, device):
    base = displaced_triclinic_argon(repeat=(4, 4, 4))  # 256 atoms, wider than two cutoffs + skin
    base.set_cell(cellpar_to_cell(base.cell.cellpar()), scale_atoms=True)  # i-PI's upper-triangular h
    template = tmp_path / "argon.xyz"
    write_ipi_xyz(str(template), [base])
    reference = IPIEvaluator(lj_model_path, str(template), skin=0.5)
    evaluator = IPIEvaluator(lj_model_path, str(template), skin=0.5, device=device, neighbor_backend="torch")
    h = base.cell.array.T / Bohr
    inverse = np.linalg.inv(base.cell.array / Bohr)
    rng = np.random.default_rng(3)
    beads = [base.positions / Bohr + rng.normal(0.0, 0.15, size=base.positions.shape) for _ in range(3)]
    velocities = [rng.normal(0.0, 0.02, size=base.positions.shape) for _ in range(3)]
    worst = 0.0
    for _step in range(15):
        for bead in range(3):
            beads[bead] = beads[bead] + velocities[bead]
            fractional = beads[bead] @ inverse
            wrapped = (fractional - np.floor(fractional)) @ (base.cell.array / Bohr)  # as i-PI sends them
            energy, forces, virial, _ = evaluator(h, wrapped)
            expected_energy, expected_forces, expected_virial, _ = reference(h, wrapped)
            worst = max(
                worst,
                abs(energy - expected_energy) / abs(expected_energy),
                np.abs(forces - expected_forces).max() / np.abs(expected_forces).max(),
                np.abs(virial - expected_virial).max() / np.abs(expected_virial).max(),
            )
    assert worst <= (0.0 if device == "cpu" else 1e-12), worst
    caches = evaluator.runner.cache.caches
    assert len(caches) == 3 and all(isinstance(cache, DeviceNeighborListCache) for cache in caches)
    assert [c.n_builds for c in caches] == [c.n_builds for c in reference.runner.cache.caches]
