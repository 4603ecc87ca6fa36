"""The evaluator behind every i-PI form: cells, units, unwrapping and neighbor-list reuse.

i-PI wraps atoms into the box and a client serves beads in turn; the evaluator unwraps each
structure to continue its own trajectory so that its Verlet-skin lists stay valid. Whatever it
does, every result must equal a fresh evaluation by the core (no cache) on what i-PI sent.
"""

import numpy as np
from ase.units import Bohr
from ipi_harness import argon_frames, write_ipi_xyz

from atomplug.core import ModelRunner, Structure
from atomplug.ipi_driver.evaluator import IPIEvaluator


def test_wrapped_interleaved_beads_match_fresh_evaluations(lj_model_path, tmp_path):
    base, _ = argon_frames(1)
    template = tmp_path / "argon.xyz"
    write_ipi_xyz(str(template), [base])  # i-PI's own format: periodic from its CELL comment
    evaluator = IPIEvaluator(lj_model_path, str(template), skin=0.5)
    reference = ModelRunner(lj_model_path, length_unit="Bohr", energy_unit="Hartree")
    h = base.cell.array.T / Bohr
    inverse = np.linalg.inv(base.cell.array / Bohr)
    rng = np.random.default_rng(3)
    beads = [base.positions / Bohr + rng.normal(0.0, 0.15, size=base.positions.shape) for _ in range(4)]
    velocities = [rng.normal(0.0, 0.02, size=base.positions.shape) for _ in range(4)]
    worst = 0.0
    for _step in range(30):
        for bead in range(4):
            beads[bead] = beads[bead] + velocities[bead]
            fractional = beads[bead] @ inverse
            wrapped = (fractional - np.floor(fractional)) @ (base.cell.array / Bohr)  # as i-PI sends them
            energy, forces, virial, extras = evaluator(h, wrapped)
            fresh = reference.run(
                [Structure(base.numbers, wrapped, h.T, True)], ["energy"], forces=True, virial=True, use_cache=False
            )
            assert extras == ""
            worst = max(
                worst,
                abs(energy - fresh["energy"][0, 0]) / abs(energy),
                np.abs(forces - fresh["forces"]).max() / np.abs(fresh["forces"]).max(),
                np.abs(virial - fresh["virial"][0].T).max() / np.abs(fresh["virial"]).max(),
            )
    assert worst < 1e-12, worst
    caches = evaluator.runner.cache.caches
    assert len(caches) == 4  # one per bead
    builds = sum(cache.n_builds for cache in caches)
    assert builds < 30  # far fewer than the 120 evaluations: wrapping did not force rebuilds


def test_cell_transposed_at_the_boundary(lj_model_path, tmp_path):
    """i-PI's h has the lattice vectors as columns: a sheared cell fed as h.T must give the
    same energy as ASE's rows, and the virial comes back transposed."""
    base, _ = argon_frames(1)
    template = tmp_path / "argon.extxyz"
    base.write(template)
    evaluator = IPIEvaluator(lj_model_path, str(template))
    runner = ModelRunner(lj_model_path, length_unit="Bohr", energy_unit="Hartree")
    cell = base.cell.array / Bohr
    positions = base.positions / Bohr
    energy, _, virial, _ = evaluator(cell.T, positions)
    expected = runner.run([Structure(base.numbers, positions, cell, True)], ["energy"], virial=True, forces=True)
    assert abs(energy - expected["energy"][0, 0]) < 1e-14 * abs(energy)
    assert np.allclose(virial, expected["virial"][0].T, rtol=0, atol=1e-15)
    wrong, _, _, _ = evaluator(cell, positions)  # rows instead of columns: another crystal
    assert abs(wrong - energy) > 1e-6 * abs(energy)
