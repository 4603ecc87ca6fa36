"""A model that raises inside TorchScript, served to a real i-PI: the client stops at once with the
model's message and a non-zero exit. What i-PI does next is i-PI's choice: by default it keeps
waiting for another client to take the request (a client may be restarted), and with
`<exit_on_disconnect>true</exit_on_disconnect>` in its <ffsocket> it stops cleanly at once.

(A server killed mid-run: tests/ipi/test_ipi_errors.py::test_server_killed_mid_run. One of two
clients killed: tests/ipi/test_ipi_pimd.py::test_two_clients_share_beads_and_survive_losing_one.)
"""

from __future__ import annotations

import time

import pytest
from ase import Atoms
from bad_files import FRAGILE_LIMIT, FRAGILE_MESSAGE, export_fragile
from ipi_harness import log_text, pimd_xml, socket_xml, unique_socket_name, wait, write_ipi_xyz


@pytest.mark.parametrize("exit_on_disconnect", [False, True], ids=["ipi-default", "exit_on_disconnect"])
def test_model_that_raises(procs, tmp_path, exit_on_disconnect):
    model = export_fragile(str(tmp_path / "fragile.pt"))
    chain = Atoms("H" * (FRAGILE_LIMIT + 2), positions=[[1.5 * k, 0.0, 0.0] for k in range(FRAGILE_LIMIT + 2)])
    chain.write(tmp_path / "chain.xyz")
    write_ipi_xyz(str(tmp_path / "init.xyz"), [chain], box_bohr=80.0)
    name = unique_socket_name("raises")
    forcefield = socket_xml("model", unix=name, pbc=False)
    if exit_on_disconnect:
        forcefield = forcefield.replace("</address>", "</address><exit_on_disconnect>true</exit_on_disconnect>")
    server = procs.ipi(pimd_xml(forcefield, "init.xyz", steps=20, nbeads=1))
    client = procs.client("--model", model, "--structure", str(tmp_path / "chain.xyz"), "--unix", name)
    status = wait(client, 60)
    text = log_text(client)
    assert status == 1, text
    assert (
        f"atomplug-ipi: error: the model failed on the structure i-PI sent: the model's own code raised "
        f"RuntimeError: {FRAGILE_MESSAGE} (the model refuses this input"
    ) in text
    assert "Traceback" not in text
    if exit_on_disconnect:
        assert wait(server, 30) == 0, log_text(server)  # i-PI's soft exit (restartable), not a hang
        assert "Client shutdown" in log_text(server)
    else:
        deadline = time.monotonic() + 30
        while "died or got unresponsive" not in log_text(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "died or got unresponsive" in log_text(server)
        time.sleep(1.0)
        assert server.poll() is None, "i-PI waits for another client by default"
