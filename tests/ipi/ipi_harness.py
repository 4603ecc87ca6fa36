"""Run real i-PI servers and atomplug clients as subprocesses, with inputs written for each test.

Everything is in atomic units on the i-PI side (the i-PI unit table carries only ~8 significant
digits, so a 1e-8 comparison must not go through it); conversions to eV and Angstrom use
ase.units, the same CODATA constants atomplug's core uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.geometry import cellpar_to_cell
from ase.units import Bohr, Hartree
from structures import displaced_triclinic_argon

BIN = os.path.dirname(sys.executable)


def executable(name: str) -> str:
    path = shutil.which(name, path=BIN)
    assert path, f"the {name!r} console script is installed next to the interpreter ({BIN})"
    return path


_SOCKETS: List[str] = []


def unique_socket_name(tag: str = "t") -> str:
    """A fresh UNIX socket name; a stale /tmp/ipi_<name> file would make i-PI fail. Removed at the
    end of the test (a killed i-PI leaves its file behind)."""
    name = f"atomplug-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    remove_socket(name)
    _SOCKETS.append(name)
    return name


def remove_test_sockets() -> None:
    while _SOCKETS:
        remove_socket(_SOCKETS.pop())


def remove_socket(name: str) -> None:
    try:
        os.unlink("/tmp/ipi_" + name)
    except FileNotFoundError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


# ---- structures ---------------------------------------------------------------------------------


def argon_frames(n_frames: int, seed: int = 11):
    """A sheared, displaced fcc Ar box (32 atoms, smaller than twice the cutoff) in ASE's standard
    orientation (i-PI's h is upper triangular), then `n_frames` displaced copies in that cell."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        frame = atoms.copy()
        frame.positions += rng.uniform(-0.12, 0.12, size=frame.positions.shape)
        frames.append(frame)
    return atoms, frames


def molecule_frames(name: str, n_frames: int, seed: int = 5, amplitude: float = 0.06):
    atoms = molecule(name)
    atoms.pbc = False
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        frame = atoms.copy()
        frame.positions += rng.normal(0.0, amplitude, size=frame.positions.shape)
        frames.append(frame)
    return atoms, frames


# ---- i-PI input files ---------------------------------------------------------------------------


def write_ipi_xyz(path: str, frames: Sequence[Atoms], box_bohr: Optional[float] = None) -> None:
    """Frames as an i-PI xyz file in atomic units with full precision and the cell as CELL(H).

    Periodic frames must have ASE's standard orientation (a along x, b in the xy plane), so that
    h = cell.T is the upper-triangular matrix i-PI uses. A molecule gets a cubic box of
    `box_bohr` (i-PI always has a cell), centred on it.
    """
    with open(path, "w") as handle:
        for atoms in frames:
            positions = atoms.positions / Bohr
            if atoms.pbc.any():
                h = atoms.cell.array.T / Bohr
                assert np.allclose(np.tril(h, -1), 0.0), "i-PI needs an upper-triangular h"
            else:
                h = np.eye(3) * box_bohr
            cell = " ".join(f"{x:.17e}" for x in h.reshape(-1))
            handle.write(f"{len(atoms)}\n# CELL(H): {cell} cell{{atomic_unit}} positions{{atomic_unit}}\n")
            for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), positions):
                handle.write(f"{symbol} {x:.17e} {y:.17e} {z:.17e}\n")


def socket_xml(
    name: str, *, unix: Optional[str] = None, port: Optional[int] = None, pbc: bool = True, batch_size: int = 1
) -> str:
    batch = f"<batch_size>{batch_size}</batch_size>" if batch_size > 1 else ""
    if unix is not None:
        return (
            f'<ffsocket name="{name}" mode="unix" pbc="{str(pbc).lower()}"><address>{unix}</address>{batch}</ffsocket>'
        )
    return (
        f'<ffsocket name="{name}" mode="inet" pbc="{str(pbc).lower()}"><address>localhost</address>'
        f"<port>{port}</port>{batch}</ffsocket>"
    )


def replay_xml(forcefield: str, n_atoms: int, n_frames: int, init: str, frames: str) -> str:
    """Replay `frames` (same cell as `init`), recording potential, virial, volume and, at full
    precision through `atom_f`/`atom_x`, every force and position."""
    per_atom = ", ".join(f"atom_x(atom={i};bead=0), atom_f(atom={i};bead=0)" for i in range(n_atoms))
    return f"""<simulation verbosity="low" floatformat="%.17e">
  <output prefix="sim">
    <properties stride="1" filename="out" flush="1">[step, potential, virial_md, volume, {per_atom}]</properties>
    <trajectory stride="1" filename="xtr" extra_type="raw" flush="1">extras</trajectory>
  </output>
  <total_steps>{n_frames}</total_steps>
  {forcefield}
  <system>
    <initialize nbeads="1"><file mode="xyz">{init}</file></initialize>
    <forces><force forcefield="model"/></forces>
    <motion mode="replay"><file mode="xyz">{frames}</file></motion>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
  </system>
</simulation>
"""


def dynamics_xml(
    forcefield: str,
    init: str,
    *,
    steps: int,
    properties: str,
    dynamics: str,
    nbeads: int = 1,
    seed: int = 4242,
    temperature: float = 300.0,
    extra_output: str = "",
) -> str:
    """An i-PI MD input: `dynamics` is the body of <dynamics> (mode set by the caller), `properties`
    the list printed every step to sim.out."""
    return f"""<simulation verbosity="low" floatformat="%.17e">
  <output prefix="sim">
    <properties stride="1" filename="out" flush="1">[{properties}]</properties>{extra_output}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>{seed}</seed></prng>
  {forcefield}
  <system>
    <initialize nbeads="{nbeads}">
      <file mode="xyz">{init}</file>
      <velocities mode="thermal" units="kelvin">{temperature}</velocities>
    </initialize>
    <forces><force forcefield="model"/></forces>
    <motion mode="dynamics">
      {dynamics}
    </motion>
    <ensemble><temperature units="kelvin">{temperature}</temperature></ensemble>
  </system>
</simulation>
"""


def pimd_xml(
    forcefield: str,
    init: str,
    *,
    steps: int,
    nbeads: int = 4,
    seed: int = 4242,
    timestep_fs: float = 0.5,
    temperature: float = 300.0,
    extra_type: str = "raw",
) -> str:
    """Path-integral NVT (PILE-L thermostat), recording per-bead potentials and each bead's
    extras (`extra_type` names one JSON field to print per bead; "raw" prints them all)."""
    return dynamics_xml(
        forcefield,
        init,
        steps=steps,
        nbeads=nbeads,
        seed=seed,
        temperature=temperature,
        properties="step, time{femtosecond}, conserved, temperature{kelvin}, kinetic_cv, potential, bead_potentials",
        extra_output=f"""
    <trajectory stride="1" filename="xtr" extra_type="{extra_type}" flush="1">extras</trajectory>""",
        dynamics=f"""<dynamics mode="nvt">
        <timestep units="femtosecond">{timestep_fs}</timestep>
        <thermostat mode="pile_l"><tau units="femtosecond">50</tau></thermostat>
      </dynamics>""",
    )


# ---- processes ----------------------------------------------------------------------------------


class Processes:
    """Start i-PI and clients in a work directory; whatever is left running is killed at the end."""

    def __init__(self, workdir: str):
        self.workdir = str(workdir)
        self.started: List[subprocess.Popen] = []

    def _start(self, command: Sequence[str], log: str, env=None) -> subprocess.Popen:
        handle = open(os.path.join(self.workdir, log), "w")
        environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        process = subprocess.Popen(
            list(command),
            cwd=self.workdir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        handle.close()
        process.log_path = os.path.join(self.workdir, log)
        self.started.append(process)
        return process

    def ipi(self, xml: str, log: str = "ipi.log") -> subprocess.Popen:
        with open(os.path.join(self.workdir, "input.xml"), "w") as handle:
            handle.write(xml)
        return self._start([executable("i-pi"), "input.xml"], log)

    def client(self, *args: str, log: str = "client.log") -> subprocess.Popen:
        return self._start([executable("atomplug-ipi"), "--threads", "1", *args], log)

    def command(self, command: Sequence[str], log: str) -> subprocess.Popen:
        return self._start(command, log)

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(f"{process.args[0]} did not finish within {timeout} s:\n{log_text(process)}") from None


def log_text(process: subprocess.Popen) -> str:
    with open(process.log_path) as handle:
        return handle.read()


def wait_for_rows(path: str, rows: int, timeout: float, process: Optional[subprocess.Popen] = None) -> np.ndarray:
    """Wait until an i-PI properties file has `rows` data rows (it is flushed every step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = read_properties(path)
        if data.shape[0] >= rows:
            return data
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {rows} rows within {timeout} s")


def read_properties(path: str) -> np.ndarray:
    if not os.path.exists(path):
        return np.zeros((0, 0))
    rows = []
    with open(path) as handle:
        for line in handle:
            if line.startswith("#") or not line.strip():
                continue
            try:
                rows.append([float(x) for x in line.split()])
            except ValueError:
                continue  # a line being written
    width = max((len(r) for r in rows), default=0)
    rows = [r for r in rows if len(r) == width]
    return np.array(rows).reshape(len(rows), width)


def read_extras(path: str) -> List[str]:
    """The raw extras strings of an i-PI extras trajectory, one per step."""
    records: List[str] = []
    with open(path) as handle:
        for line in handle:
            if line.startswith(" #EXTRAS"):
                continue
            if line.strip():
                records.append(line.strip())
    return records


def to_ev(energy_hartree):
    return np.asarray(energy_hartree) * Hartree


def forces_to_ev_per_angstrom(forces):
    return np.asarray(forces) * (Hartree / Bohr)


def kill(process: subprocess.Popen, sig=signal.SIGKILL) -> None:
    os.kill(process.pid, sig)


# ---- replaying frames through i-PI and comparing with the ASE calculator ------------------------


class Record:
    """What i-PI recorded at one step, in atomic units (virial in i-PI's convention, 3x3)."""

    def __init__(self, row: np.ndarray, n_atoms: int):
        self.step = int(row[0])
        self.energy = float(row[1])
        xx, yy, zz, xy, xz, yz = row[2:8] * row[8]  # virial_md is virial / volume
        self.virial = np.array([[xx, xy, xz], [0.0, yy, yz], [0.0, 0.0, zz]])
        per_atom = row[9 : 9 + 6 * n_atoms].reshape(n_atoms, 2, 3)
        self.positions = per_atom[:, 0].copy()
        self.forces = per_atom[:, 1].copy()


def replay(
    procs: Processes,
    frames: Sequence[Atoms],
    forcefield: str,
    *,
    box_bohr: Optional[float] = None,
    start=None,
    timeout: float = 60.0,
):
    """Replay `frames` in a real i-PI with `forcefield` (an <ffsocket>/<ffdirect> element named
    "model"); `start()` launches the clients once i-PI is starting. Returns the i-PI process
    and one Record per step."""
    import os as _os

    write_ipi_xyz(_os.path.join(procs.workdir, "init.xyz"), frames[:1], box_bohr)
    write_ipi_xyz(_os.path.join(procs.workdir, "frames.xyz"), frames, box_bohr)
    n_atoms = len(frames[0])
    server = procs.ipi(replay_xml(forcefield, n_atoms, len(frames), "init.xyz", "frames.xyz"))
    clients = start() if start is not None else []
    status = wait(server, timeout)
    assert status == 0, log_text(server)
    data = read_properties(_os.path.join(procs.workdir, "sim.out"))
    records = [Record(row, n_atoms) for row in data]
    # i-PI's first row is its initial evaluation; the following rows are the replayed frames.
    assert len(records) == len(frames) + 1
    for record, frame in zip(records[1:], frames):
        assert np.array_equal(record.positions, frame.positions / Bohr), "i-PI replayed other positions"
    return server, clients, records


def calculator_reference(calculator, frame: Atoms, positions_bohr: np.ndarray):
    """Energy (eV), forces (eV/A) and the virial in i-PI's convention (eV) from the ASE calculator
    on the positions i-PI used (the frame's atoms and cell)."""
    atoms = frame.copy()
    atoms.positions = positions_bohr * Bohr
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    if atoms.pbc.all():
        from ase.stress import voigt_6_to_full_3x3_stress

        virial = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume()  # W = -stress V
        virial = virial.T
    else:
        virial = forces.T @ atoms.positions  # i-PI's sum f (x) r, for an isolated structure
    return energy, forces, virial


def agreement(records: Sequence[Record], frames: Sequence[Atoms], calculator) -> dict:
    """Largest relative differences between i-PI's records and the calculator, over all steps."""
    worst = {"energy": 0.0, "forces": 0.0, "virial": 0.0}
    for record in records:
        energy, forces, virial = calculator_reference(calculator, frames[0], record.positions)
        worst["energy"] = max(worst["energy"], abs(to_ev(record.energy) - energy) / abs(energy))
        ipi_forces = forces_to_ev_per_angstrom(record.forces)
        worst["forces"] = max(worst["forces"], np.abs(ipi_forces - forces).max() / np.abs(forces).max())
        upper = np.triu(virial)  # i-PI keeps the upper triangle of the virial
        worst["virial"] = max(worst["virial"], np.abs(to_ev(record.virial) - upper).max() / np.abs(upper).max())
    return worst
