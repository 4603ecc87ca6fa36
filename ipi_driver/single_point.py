"""One structure through a real i-PI server and the `atomplug-ipi` client, for `atomplug crosscheck`
(`atomplug.cli.crosscheck`), which reads the plain dict it returns.

i-PI replays the structure once and records, in atomic units and at full precision, the potential,
the virial and every atom's force. The structure goes to i-PI in atomic units converted with the
core's constants, so i-PI's own (8-digit) unit table is never involved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Dict

import numpy as np

from atomplug.core.frames import back_to_structure, standard_orientation
from atomplug.core.units import conversion_factor

BOX_BOHR = 200.0  # i-PI always has a cell; for a molecule (pbc="false") it is never used
TIMEOUT = 300.0

REPLAY = """<simulation verbosity="low" floatformat="%.17e">
  <output prefix="sim">
    <properties stride="1" filename="out" flush="1">[step, potential, virial_md, volume, {per_atom}]</properties>
  </output>
  <total_steps>1</total_steps>
  <ffsocket name="model" mode="unix" pbc="{pbc}"><address>{address}</address></ffsocket>
  <system>
    <initialize nbeads="1"><file mode="xyz">structure.xyz</file></initialize>
    <forces><force forcefield="model"/></forces>
    <motion mode="replay"><file mode="xyz">structure.xyz</file></motion>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
  </system>
</simulation>
"""


def _executable(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is not installed: pip install 'atomplug[ipi]'")
    return path


def _write_ipi_xyz(path: str, atoms, bohr_per_angstrom: float) -> None:
    """i-PI xyz in atomic units, 17 digits, with the cell as CELL(H) (h = cell rows as columns)."""
    h = atoms.cell.array.T * bohr_per_angstrom if atoms.pbc.any() else np.eye(3) * BOX_BOHR
    cell = " ".join(f"{x:.17e}" for x in h.reshape(-1))
    with open(path, "w") as handle:
        handle.write(f"{len(atoms)}\n# CELL(H): {cell} cell{{atomic_unit}} positions{{atomic_unit}}\n")
        for symbol, position in zip(atoms.get_chemical_symbols(), atoms.positions * bohr_per_angstrom):
            handle.write(f"{symbol} {position[0]:.17e} {position[1]:.17e} {position[2]:.17e}\n")


def _last_row(path: str) -> np.ndarray:
    rows = []
    with open(path) as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                rows.append([float(x) for x in line.split()])
    if not rows:
        raise RuntimeError(f"i-PI wrote no properties to {path}")
    return np.array(rows[-1])


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path) as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def _write_template(path: str, atoms, inputs) -> None:
    """The client's structure file: extxyz with 17 significant digits (ASE's writer keeps 8), so
    per-atom charges and masses reach the model exactly as the ASE reference reads them."""
    columns = ["species:S:1", "pos:R:3"]
    values = [atoms.positions]
    if "charges" in inputs and atoms.has("initial_charges"):
        columns.append("initial_charges:R:1")
        values.append(atoms.get_initial_charges()[:, None])
    if "masses" in inputs:
        columns.append("masses:R:1")
        values.append(atoms.get_masses()[:, None])
    lattice = " ".join(f"{x:.17e}" for x in atoms.cell.array.reshape(-1))
    pbc = " ".join("T" if periodic else "F" for periodic in atoms.pbc)
    header = f'Properties={":".join(columns)} pbc="{pbc}"'
    if atoms.pbc.any():
        header = f'Lattice="{lattice}" ' + header
    rows = np.concatenate(values, axis=1)
    with open(path, "w") as handle:
        handle.write(f"{len(atoms)}\n{header}\n")
        for symbol, row in zip(atoms.get_chemical_symbols(), rows):
            handle.write(symbol + " " + " ".join(f"{x:.17e}" for x in row) + "\n")


def _input_options(atoms, inputs, variant: str) -> list:
    """--charge, --spin (from atoms.info, as ASE reads them) and --variant for the client."""
    options = []
    for name, key, flag in (("total_charge", "charge", "--charge"), ("spin_multiplicity", "spin", "--spin")):
        if name in inputs and key in atoms.info:
            options += [flag, repr(float(atoms.info[key]))]
    if variant:
        options += ["--variant", variant]
    return options


def evaluate_with_ipi(model_path: str, atoms, workdir: str, variant: str = "") -> Dict[str, object]:
    """Energy (eV), forces (eV/A) and virial (eV) of `atoms` computed through i-PI.

    The model's inputs come from `atoms` as in ASE: the per-atom charges and masses travel in the
    client's extxyz structure file, info["charge"] and info["spin"] as --charge and --spin;
    velocities cannot (i-PI does not send them), so such a model is skipped. `variant` is the
    client's --variant.

    Returns {"energy": float, "forces": [n, 3] array, "virial": 3x3 array} in the structure's own
    orientation, or {"skipped": reason} for a structure i-PI cannot take; raises RuntimeError when
    i-PI or the client fails.
    """
    if atoms.pbc.any() and not atoms.pbc.all():
        return {"skipped": f"i-PI treats a structure as fully periodic or not at all (pbc={atoms.pbc.tolist()})"}
    from atomplug.core.archive import read_header

    inputs = read_header(model_path)["capabilities"].get("inputs", {})
    if "velocities" in inputs:
        return {"skipped": "the model reads velocities, which the i-PI socket protocol does not send"}
    rotated, rotation = standard_orientation(atoms)
    bohr = conversion_factor("Angstrom", "Bohr")
    hartree_to_ev = conversion_factor("Hartree", "eV")
    n_atoms = len(atoms)
    periodic = bool(atoms.pbc.all())

    _write_ipi_xyz(os.path.join(workdir, "structure.xyz"), rotated, bohr)
    template = os.path.join(workdir, "template.extxyz")
    _write_template(template, rotated, inputs)
    address = f"atomplug-crosscheck-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    per_atom = ", ".join(f"atom_f(atom={i};bead=0)" for i in range(n_atoms))
    with open(os.path.join(workdir, "input.xml"), "w") as handle:
        handle.write(REPLAY.format(per_atom=per_atom, pbc=str(periodic).lower(), address=address))

    environment = dict(os.environ, OMP_NUM_THREADS="1")
    processes = []
    try:
        with open(os.path.join(workdir, "ipi.log"), "w") as log:
            server = subprocess.Popen(
                [_executable("i-pi"), "input.xml"],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        processes.append(server)
        with open(os.path.join(workdir, "client.log"), "w") as log:
            client = subprocess.Popen(
                [
                    _executable("atomplug-ipi"),
                    "--model",
                    os.path.abspath(model_path),
                    "--structure",
                    template,
                    "--unix",
                    address,
                    "--threads",
                    "1",
                    *_input_options(atoms, inputs, variant),
                ],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        processes.append(client)
        deadline = time.monotonic() + TIMEOUT
        while server.poll() is None:
            if client.poll() not in (None, 0):
                raise RuntimeError(
                    f"the atomplug-ipi client failed (exit {client.returncode}): "
                    f"{_tail(os.path.join(workdir, 'client.log'), 3)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"i-PI did not finish within {TIMEOUT:.0f} s")
            time.sleep(0.05)
        if server.returncode != 0:
            raise RuntimeError(f"i-PI failed (exit {server.returncode}): {_tail(os.path.join(workdir, 'ipi.log'))}")
        client.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        try:
            os.unlink("/tmp/ipi_" + address)
        except FileNotFoundError:
            pass

    row = _last_row(os.path.join(workdir, "sim.out"))
    xx, yy, zz, xy, xz, yz = row[2:8] * row[8]  # virial_md is the virial divided by the volume
    upper = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])  # i-PI keeps the upper triangle
    forces = row[9 : 9 + 3 * n_atoms].reshape(n_atoms, 3) * hartree_to_ev * bohr
    forces, virial = back_to_structure(rotation, forces, upper * hartree_to_ev)
    return {"energy": float(row[1]) * hartree_to_ev, "forces": forces, "virial": virial}
