"""`make demo` (PLUMED section): metadynamics on an ATOMPLUG collective variable, from ASE.

A short MD of methanol with ANI-1x (an atomplug model, as an ASE calculator), biased by PLUMED's
METAD on the O-H coordination number computed by the exported coordination example model through
the ATOMPLUG action, with PLUMED's native COORDINATION printed next to it as a check. ASE drives
PLUMED through `ase.calculators.plumed.Plumed`. It combines two engines (the ASE calculator and the
PLUMED action) and two example models, so it lives with the examples, not in an engine's package.

    python -m atomplug.examples.plumed_demo ani1x.pt [workdir]
    run_demo(ani1x_path, workdir)                         # AtomplugCalculator underneath
    run_demo(ani1x_path, workdir, calculator_factory=f)   # f(model_path) -> ASE calculator
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import numpy as np

# O-H coordination: RATIONAL R_0 = 1.25 Angstrom, D_MAX = 4 Angstrom, NOSTRETCH (PLUMED works in nm)
R0_ANGSTROM = 1.25
D_MAX_ANGSTROM = 4.0


def _default_calculator(model_path: str):
    from atomplug.ase_calculator import AtomplugCalculator

    return AtomplugCalculator(model_path)


def run_demo(
    ani1x_path: str,
    workdir: str,
    calculator_factory: Optional[Callable[[str], object]] = None,
    steps: int = 100,
    pace: int = 10,
) -> str:
    """Run the biased MD in `workdir`, print the COLVAR readably, return its path."""
    from ase import units
    from ase.build import molecule
    from ase.calculators.plumed import Plumed
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from atomplug.examples.coordination import export_coordination
    from atomplug.plumed_cv import plugin_path

    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    plugin = plugin_path()
    cv_model = os.path.join(workdir, "coordination-OH.pt")
    export_coordination(
        cv_model, r0=R0_ANGSTROM, d_max=D_MAX_ANGSTROM, types_a=[8], types_b=[1], atomic_types=[1, 6, 8]
    )

    atoms = molecule("CH3OH")
    oxygens = [i + 1 for i, z in enumerate(atoms.numbers) if z == 8]
    hydrogens = [i + 1 for i, z in enumerate(atoms.numbers) if z == 1]
    carbons = [i + 1 for i, z in enumerate(atoms.numbers) if z == 6]
    as_list = lambda atom_numbers: ",".join(str(i) for i in atom_numbers)  # noqa: E731
    colvar = os.path.join(workdir, "COLVAR")
    hills = os.path.join(workdir, "HILLS")
    for stale in (colvar, hills):
        if os.path.exists(stale):
            os.unlink(stale)
    switch = f"{{RATIONAL R_0={R0_ANGSTROM / 10} D_MAX={D_MAX_ANGSTROM / 10} NOSTRETCH}}"
    plumed_input = [
        f"LOAD FILE={plugin}",
        f"cn: ATOMPLUG MODEL={cv_model} SPECIES1={as_list(hydrogens)} SPECIES2={as_list(carbons)} "
        f"SPECIES3={as_list(oxygens)} SPECIES_TO_TYPES=1,6,8",
        f"native: COORDINATION GROUPA={as_list(oxygens)} GROUPB={as_list(hydrogens)} SWITCH={switch}",
        f"metad: METAD ARG=cn SIGMA=0.05 HEIGHT=2.0 PACE={pace} BIASFACTOR=10 TEMP=300 FILE={hills}",
        f"PRINT ARG=cn,native,metad.bias STRIDE=5 FILE={colvar} FMT=%.12f",
    ]
    factory = calculator_factory or _default_calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(7))
    atoms.calc = Plumed(
        calc=factory(ani1x_path),
        input=plumed_input,
        timestep=0.5 * units.fs,
        atoms=atoms,
        kT=300 * units.kB,
        log=os.path.join(workdir, "plumed.log"),
    )
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []  # time (fs), potential energy incl. the bias (eV), temperature (K)

    def record() -> None:
        energies.append((dynamics.nsteps * 0.5, atoms.get_potential_energy(), atoms.get_temperature()))

    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    np.savetxt(
        os.path.join(workdir, "energies.dat"),
        np.array(energies),
        header="time (fs), potential energy incl. bias (eV), temperature (K)",
    )
    atoms.calc.plumed.finalize()  # flush COLVAR and HILLS
    elapsed = time.perf_counter() - start

    print(f"  methanol, ANI-1x through atomplug, {steps} MD steps of 0.5 fs at ~300 K, METAD every {pace} steps")
    print("  on cn = O-H coordination (ATOMPLUG running the exported coordination model),")
    print("  next to PLUMED's native COORDINATION of the same switching function:")
    print()
    rows = np.atleast_2d(np.loadtxt(colvar, comments="#"))
    print(f"  {'time (ps)':>10}{'cn ATOMPLUG':>16}{'cn native':>16}{'|diff|':>10}{'bias (kJ/mol)':>15}")
    for row in rows:
        print(f"  {row[0]:>10.4f}{row[1]:>16.10f}{row[2]:>16.10f}{abs(row[1] - row[2]):>10.1e}{row[3]:>15.4f}")
    n_hills = sum(1 for line in open(hills) if not line.startswith("#"))
    print(f"\n  {n_hills} Gaussians deposited; COLVAR and HILLS in {os.path.relpath(workdir)}/ ({elapsed:.1f} s)")
    return colvar


if __name__ == "__main__":
    import sys

    run_demo(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "build/demo/plumed")
