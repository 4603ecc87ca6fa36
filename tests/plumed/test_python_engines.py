"""ATOMPLUG when PLUMED is driven from Python: ASE's `Plumed` calculator and i-PI's `<ffplumed>`.

The same input holds the native COORDINATION and ATOMPLUG; the bias acts on one of them; values
and bias forces must be the same whichever is biased (to 1e-8 relative).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from plumed_testing import FMT, assert_close, random_frames, read_colvar

SWITCH = "{RATIONAL R_0=0.3 D_MAX=0.8 NOSTRETCH}"  # the 'coordination' test model (Angstrom, r0=3, d_max=8)


def oxygen_hydrogen_atoms(seed: int, periodic: bool):
    from ase import Atoms

    positions = random_frames(30, 1, 2.2, seed=seed)[0] * 10.0  # Angstrom
    atoms = Atoms(numbers=[8] * 10 + [1] * 20, positions=positions)
    if periodic:
        atoms.cell = np.array([[25.0, 0.0, 0.0], [2.0, 24.0, 0.0], [-1.0, 1.5, 26.0]])
        atoms.pbc = True
    return atoms


def plumed_lines(plugin, model, biased, colvar):
    return [
        f"LOAD FILE={plugin}",
        f"ref: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={SWITCH}",
        f"cv: ATOMPLUG MODEL={model} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1",
        f"RESTRAINT ARG={biased} AT=2.0 KAPPA=50.0",
        f"PRINT ARG=ref,cv FILE={colvar} FMT={FMT}",
    ]


@pytest.mark.parametrize("periodic", [True, False])
def test_ase_plumed_calculator(tmp_path, plugin, plumed_models, periodic):
    from ase.calculators.lj import LennardJones
    from ase.calculators.plumed import Plumed

    forces = {}
    for biased in ("ref", "cv"):
        atoms = oxygen_hydrogen_atoms(seed=21, periodic=periodic)
        colvar = str(tmp_path / f"COLVAR-{biased}")
        calculator = Plumed(
            calc=LennardJones(sigma=1.0, epsilon=0.001, rc=3.0),
            input=plumed_lines(plugin, plumed_models["coordination"], biased, colvar),
            timestep=1.0,
            atoms=atoms,
            kT=0.0257,
            log=str(tmp_path / f"plumed-{biased}.log"),
        )
        atoms.calc = calculator
        steps = []
        for step in range(3):
            atoms.positions[step] += 0.05  # a new configuration at each step
            calculator.istep = step
            steps.append(atoms.get_forces().copy())
        calculator.plumed.finalize()
        forces[biased] = np.array(steps)
        colvar_data = read_colvar(colvar)
        assert len(colvar_data["cv"]) >= 1
        assert_close(colvar_data["cv"], colvar_data["ref"], what=f"values (bias on {biased})")
    assert_close(forces["cv"], forces["ref"], what="forces")
    lj_only = np.array(forces["ref"])  # the bias must matter: compare with LennardJones alone
    atoms = oxygen_hydrogen_atoms(seed=21, periodic=periodic)
    atoms.positions[0] += 0.05
    atoms.calc = LennardJones(sigma=1.0, epsilon=0.001, rc=3.0)
    assert np.max(np.abs(lj_only[0] - atoms.get_forces())) > 1e-3


IPI_INPUT = """<simulation verbosity="quiet" safe_stride="100000">
  <output prefix="sim">
    <properties stride="1" filename="out">[step, time{femtosecond}, conserved, potential]</properties>
  </output>
  <total_steps>6</total_steps>
  <prng><seed>31415</seed></prng>
  <ffdirect name="zero"><pes>dummy</pes></ffdirect>
  <ffplumed name="plumed">
    <file mode="xyz" units="angstrom">init.xyz</file>
    <plumed_dat>plumed.dat</plumed_dat>
  </ffplumed>
  <system>
    <initialize nbeads="1">
      <file mode="xyz" units="angstrom">init.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="zero"/></forces>
    <ensemble>
      <temperature units="kelvin">300</temperature>
      <bias><force forcefield="plumed"/></bias>
    </ensemble>
    <motion mode="dynamics">
      <dynamics mode="nve"><timestep units="femtosecond">0.5</timestep></dynamics>
    </motion>
  </system>
  <smotion mode="metad"><metad><metaff>[ plumed ]</metaff></metad></smotion>
</simulation>
"""


def i_pi_program():
    program = shutil.which("i-pi", path=os.path.dirname(sys.executable))
    assert program is not None, "i-PI is not installed in this environment: pip install ipi==3.3.1"
    return program


def test_ipi_ffplumed(tmp_path, plugin, plumed_models):
    """Two deterministic NVE runs of i-PI, biased through <ffplumed> by the restraint on COORDINATION
    and on ATOMPLUG: the CV values along the trajectory agree (through the forces, at every step)."""
    from ase.io import write

    atoms = oxygen_hydrogen_atoms(seed=4, periodic=True)
    colvars = {}
    for biased in ("ref", "cv"):
        directory = tmp_path / biased
        directory.mkdir()
        write(str(directory / "init.xyz"), atoms, format="extxyz")
        # i-PI's xyz reader wants its own comment line
        lines = (directory / "init.xyz").read_text().splitlines()
        a, b, c = atoms.cell.array
        lines[1] = (
            "# CELL{H}: "
            + " ".join("%.10f" % v for v in np.array([a, b, c]).T.reshape(-1))
            + " positions{angstrom} cell{angstrom}"
        )
        lines[2:] = [" ".join(line.split()[:4]) for line in lines[2:]]
        (directory / "init.xyz").write_text("\n".join(lines) + "\n")
        (directory / "plumed.dat").write_text(
            "\n".join(plumed_lines(plugin, plumed_models["coordination"], biased, "COLVAR")) + "\n"
        )
        (directory / "input.xml").write_text(IPI_INPUT)
        result = subprocess.run(
            [i_pi_program(), "input.xml"], cwd=str(directory), capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        colvars[biased] = read_colvar(str(directory / "COLVAR"))
    for biased in ("ref", "cv"):
        assert len(colvars[biased]["cv"]) >= 5
        assert_close(colvars[biased]["cv"], colvars[biased]["ref"], what=f"values (bias on {biased})")
    # the same dynamics whichever CV is biased: forces agree at every step
    assert_close(colvars["cv"]["cv"], colvars["ref"]["cv"], rtol=1e-8, what="trajectories")
    assert np.ptp(colvars["cv"]["cv"]) > 1e-6, "the biased dynamics must move the CV"
