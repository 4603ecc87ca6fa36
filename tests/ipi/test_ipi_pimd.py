"""Path integrals with several clients: beads shared, a client lost mid-run, batched requests."""

import os
import re

import numpy as np
from ipi_harness import (
    kill,
    log_text,
    molecule_frames,
    pimd_xml,
    read_extras,
    read_properties,
    socket_xml,
    unique_socket_name,
    wait,
    wait_for_rows,
    write_ipi_xyz,
)

STEPS = 80


def served_by(workdir, nbeads=4):
    """Which client computed each bead at each step, from i-PI's own extras output."""
    names = []
    for bead in range(nbeads):
        records = read_extras(os.path.join(workdir, f"sim.xtr_{bead}"))
        names.append(records)
    return names


def test_two_clients_share_beads_and_survive_losing_one(procs, ani1x_path, tmp_path):
    base, _ = molecule_frames("H2O", 1)
    template = tmp_path / "water.xyz"
    base.write(template)
    write_ipi_xyz(str(tmp_path / "init.xyz"), [base], box_bohr=30.0)
    name = unique_socket_name("pimd")
    server = procs.ipi(
        pimd_xml(socket_xml("model", unix=name, pbc=False), "init.xyz", steps=STEPS, extra_type="client")
    )
    first = procs.client(
        "--model", ani1x_path, "--structure", str(template), "--unix", name, "--name", "A", log="A.log"
    )
    second = procs.client(
        "--model", ani1x_path, "--structure", str(template), "--unix", name, "--name", "B", log="B.log"
    )

    wait_for_rows(str(tmp_path / "sim.out"), 15, timeout=90, process=server)
    kill(first)  # SIGKILL: no goodbye, possibly in the middle of a request
    assert wait(server, 120) == 0, log_text(server)
    assert wait(second, 30) == 0, log_text(second)
    assert first.wait(timeout=10) != 0

    data = read_properties(str(tmp_path / "sim.out"))
    assert data.shape[0] == STEPS + 1 and data[-1, 0] == STEPS
    assert np.all(np.isfinite(data))
    temperature = data[:, 3]
    assert 50.0 < temperature[STEPS // 2 :].mean() < 1500.0  # a sane thermostatted run

    served = served_by(tmp_path)
    counts = {client: sum(names.count(client) for names in served) for client in ("A", "B")}
    print(f"\nbeads served before/after killing A: {counts}")
    assert counts["A"] > 0 and counts["B"] > 0
    # after the kill, every bead is computed by B
    assert all(names[-1] == "B" for names in served)
    assert re.search(r"served (\d+) structure", log_text(second))


def test_batched_requests_match_single_requests(procs, ani1x_path, tmp_path):
    """<batch_size>4</batch_size>: i-PI sends the 4 beads in one message; same numbers."""
    base, _ = molecule_frames("NH3", 1)
    template = tmp_path / "ammonia.xyz"
    base.write(template)
    write_ipi_xyz(str(tmp_path / "init.xyz"), [base], box_bohr=30.0)
    potentials = {}
    for batch in (1, 4):
        name = unique_socket_name(f"batch{batch}")
        server = procs.ipi(pimd_xml(socket_xml("model", unix=name, pbc=False, batch_size=batch), "init.xyz", steps=8))
        client = procs.client("--model", ani1x_path, "--structure", str(template), "--unix", name, log=f"b{batch}.log")
        assert wait(server, 60) == 0, log_text(server)
        assert wait(client, 30) == 0, log_text(client)
        served = re.search(r"served (\d+) structure\(s\) in (\d+) request", log_text(client))
        structures, requests = int(served.group(1)), int(served.group(2))
        assert structures == batch * requests
        potentials[batch] = read_properties(str(tmp_path / "sim.out"))[:, -4:]  # bead_potentials
        os.rename(tmp_path / "sim.out", tmp_path / f"sim-{batch}.out")
    difference = np.abs(potentials[4] - potentials[1]).max() / np.abs(potentials[1]).max()
    print(f"\nbatched vs single bead potentials, 9 steps x 4 beads: {difference:.1e} relative")
    assert difference < 1e-10
