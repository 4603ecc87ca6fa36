"""NVE with a real i-PI server and the atomplug-ipi client conserves energy (issue 8).

108 argon atoms (fcc, 3x3x3 cubic cells) with the float64 LJ example model, velocity Verlet
(`<dynamics mode="nve">`), 1000 steps of 2 fs from 60 K velocities. Drift is measured like the ASE
test: the change of a linear fit of i-PI's conserved quantity over the run, per atom. The potential
energy swings by orders of magnitude more than the tolerance, so the test is not passed by atoms
that barely move.
"""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ipi_harness import dynamics_xml, log_text, read_properties, socket_xml, unique_socket_name, wait, write_ipi_xyz
from structures import AR_LATTICE, NVE_DRIFT_TOLERANCE, linear_drift

STEPS = 1000
TIMESTEP_FS = 2.0
TEMPERATURE_K = 60.0


def nve_xml(forcefield: str, init: str) -> str:
    return dynamics_xml(
        forcefield,
        init,
        steps=STEPS,
        seed=31415,
        temperature=TEMPERATURE_K,
        properties="step, time{femtosecond}, conserved{electronvolt}, potential{electronvolt}, "
        "kinetic_md{electronvolt}, temperature{kelvin}",
        dynamics=f'<dynamics mode="nve"><timestep units="femtosecond">{TIMESTEP_FS}</timestep></dynamics>',
    )


def test_nve_conserves_energy_through_the_socket(procs, lj_model_path, tmp_path):
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((3, 3, 3))
    assert len(atoms) == 108
    write_ipi_xyz(str(tmp_path / "init.xyz"), [atoms])
    name = unique_socket_name("nve")
    server = procs.ipi(nve_xml(socket_xml("model", unix=name), "init.xyz"))
    client = procs.client("--model", lj_model_path, "--structure", str(tmp_path / "init.xyz"), "--unix", name)
    assert wait(server, 600) == 0, log_text(server)
    assert wait(client, 60) == 0, log_text(client)
    assert "i-PI sent EXIT" in log_text(client)

    data = read_properties(str(tmp_path / "sim.out"))
    assert data.shape[0] == STEPS + 1 and data[-1, 0] == STEPS
    conserved = data[:, 2] / len(atoms)
    potential = data[:, 3] / len(atoms)
    temperature = data[:, 5]
    drift = linear_drift(conserved)
    print(
        f"\ni-PI NVE 108 Ar, {STEPS} x {TIMESTEP_FS} fs: conserved-quantity drift {drift:.2e} eV/atom, "
        f"fluctuation {conserved.std():.2e} eV/atom; potential energy range {np.ptp(potential):.2e} eV/atom, "
        f"temperature {temperature[0]:.0f} K -> {temperature[-1]:.0f} K"
    )
    assert np.ptp(potential) > 100 * NVE_DRIFT_TOLERANCE, "the atoms hardly moved: not a test of integration"
    assert drift < NVE_DRIFT_TOLERANCE
