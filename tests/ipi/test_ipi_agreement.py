"""i-PI's records from an atomplug client equal the ASE calculator on the same frames (1e-8).

A real i-PI replays a trajectory of frames; the client evaluates each one; i-PI's own outputs
(potential, virial, every force at full precision) are compared with `AtomplugCalculator` in
eV and Angstrom on the positions i-PI recorded. This checks the protocol, the cell convention
(a triclinic box: h has the lattice vectors as columns), the virial transpose and the units.
"""

from ipi_harness import (
    agreement,
    argon_frames,
    free_port,
    log_text,
    molecule_frames,
    replay,
    socket_xml,
    unique_socket_name,
    wait,
    write_ipi_xyz,
)

from atomplug.ase_calculator import AtomplugCalculator

TOLERANCE = 1e-8


def test_triclinic_argon_lj_over_unix_socket(procs, lj_model_path, tmp_path):
    base, frames = argon_frames(4)
    name = unique_socket_name("lj")
    template = tmp_path / "argon.extxyz"
    base.write(template)

    def start():
        return [procs.client("--model", lj_model_path, "--structure", str(template), "--unix", name)]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    assert "i-PI sent EXIT" in log_text(clients[0])
    worst = agreement(records, frames, AtomplugCalculator(lj_model_path))
    print(f"\nLJ triclinic Ar (32 atoms, {len(records)} steps), i-PI vs ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst


def test_molecule_ani1x_over_inet_socket(procs, ani1x_path, tmp_path):
    base, frames = molecule_frames("CH3CH2OH", 4)
    port = free_port()
    template = tmp_path / "ethanol.xyz"
    base.write(template)  # a plain xyz: a molecule, the i-PI box is ignored

    def start():
        return [
            procs.client(
                "--model", ani1x_path, "--structure", str(template), "--address", "localhost", "--port", str(port)
            )
        ]

    # pbc="false": i-PI must not wrap the molecule's atoms into its box
    forcefield = socket_xml("model", port=port, pbc=False)
    _, clients, records = replay(procs, frames, forcefield, box_bohr=40.0, start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    worst = agreement(records, frames, AtomplugCalculator(ani1x_path))
    print(f"\nANI-1x ethanol ({len(records)} steps), i-PI vs ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst


def test_non_conservative_forces_and_stress(procs, lj_model_path, tmp_path):
    """--non-conservative: forces and virial from the model's direct outputs (closed-form LJ
    pair forces and stress), which for LJ equal the conservative ones."""
    base, frames = argon_frames(2, seed=23)
    name = unique_socket_name("nc")
    template = tmp_path / "init-ipi.xyz"  # i-PI's own xyz format, CELL comment: periodic

    def start():
        return [
            procs.client("--model", lj_model_path, "--structure", str(template), "--unix", name, "--non-conservative")
        ]

    write_ipi_xyz(str(template), [base])
    _, clients, records = replay(procs, frames, socket_xml("model", unix=name), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    assert "non-conservative forces" in log_text(clients[0])
    worst = agreement(records, frames, AtomplugCalculator(lj_model_path))
    print(f"\nLJ non-conservative outputs through i-PI vs conservative ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst
