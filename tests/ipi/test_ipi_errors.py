"""Bad input and lost servers: clear one-line errors, non-zero exits, bounded waits, no hangs."""

import os
import socket
import subprocess
import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ipi_harness import (
    executable,
    free_port,
    kill,
    log_text,
    pimd_xml,
    socket_xml,
    unique_socket_name,
    wait,
    wait_for_rows,
    write_ipi_xyz,
)

from atomplug.ipi_driver.evaluator import DriverError, IPIEvaluator
from atomplug.ipi_driver.protocol import Client, ConnectError, ProtocolError, ServerLost, connect


def run_client(*args, timeout=60):
    started = time.monotonic()
    run = subprocess.run([executable("atomplug-ipi"), *args], capture_output=True, text=True, timeout=timeout)
    return run, time.monotonic() - started


def water(tmp_path):
    path = tmp_path / "water.xyz"
    molecule("H2O").write(path)
    return str(path)


def test_missing_model_file(tmp_path):
    run, _ = run_client("--model", str(tmp_path / "missing.pt"), "--structure", water(tmp_path), "--unix", "x")
    assert run.returncode == 2
    assert "missing.pt" in run.stderr and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr


def test_elements_the_model_does_not_know(tmp_path, ani1x_path):
    argon = tmp_path / "argon.xyz"
    Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.8]]).write(argon)
    run, _ = run_client("--model", ani1x_path, "--structure", str(argon), "--unix", "x")
    assert run.returncode == 2
    assert "Ar (18)" in run.stderr and "unknown to this model" in run.stderr
    assert "H (1), C (6), N (7), O (8)" in run.stderr


def test_bad_options(tmp_path, ani1x_path):
    structure = water(tmp_path)
    run, _ = run_client("--model", ani1x_path, "--structure", structure, "--address", "localhost")
    assert run.returncode == 2 and "--port" in run.stderr
    # the rest is checked before connecting, by the evaluator the command line runs (exit 2)
    with pytest.raises(DriverError, match="--extras: output 'dipole' is not declared .*energy_uncertainty"):
        IPIEvaluator(ani1x_path, structure, extras="energy,dipole")
    with pytest.raises(DriverError, match="--extras: model output 'energy_uncertainty' is per structure only"):
        IPIEvaluator(ani1x_path, structure, extras="energy_uncertainty/per_atom")
    with pytest.raises(DriverError, match="--non-conservative needs a model with a 'non_conservative_forces'"):
        IPIEvaluator(ani1x_path, structure, non_conservative=True)
    with pytest.raises(DriverError, match="nothing.xyz' does not exist"):
        IPIEvaluator(ani1x_path, str(tmp_path / "nothing.xyz"))


def test_server_that_never_comes_up(tmp_path, lj_model_path):
    argon = tmp_path / "argon.xyz"
    Atoms("Ar", positions=[[0, 0, 0]]).write(argon)
    name = unique_socket_name("never")
    run, elapsed = run_client(
        "--model", lj_model_path, "--structure", str(argon), "--unix", name, "--connect-timeout", "2"
    )
    assert run.returncode == 1
    assert "waiting for i-PI" in run.stdout
    assert "no i-PI server" in run.stderr and "--connect-timeout" in run.stderr
    assert elapsed < 60
    # the same bounded wait over INET (in process: the command line is the same code)
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectError, match=f"no i-PI server at INET socket localhost:{port} after waiting 1 s"):
        connect(host="localhost", port=port, timeout=1.0, log=lambda text: None)
    assert 0.9 < time.monotonic() - started < 5.0
    with pytest.raises(ConnectError, match="cannot resolve host"):
        connect(host="no-such-host.invalid", port=port, timeout=1.0, log=lambda text: None)


def test_stale_socket_file():
    """A socket file left by a dead server: nobody listens there."""
    name = unique_socket_name("stale")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind("/tmp/ipi_" + name)
    stale.close()
    try:
        with pytest.raises(ConnectError, match="exists but nobody listens: a stale file"):
            connect(name, timeout=0.3, log=lambda text: None)
    finally:
        os.unlink("/tmp/ipi_" + name)


def test_server_killed_mid_run(procs, ani1x_path, tmp_path):
    structure = water(tmp_path)
    write_ipi_xyz(str(tmp_path / "init.xyz"), [molecule("H2O")], box_bohr=30.0)
    name = unique_socket_name("killed")
    server = procs.ipi(pimd_xml(socket_xml("model", unix=name, pbc=False), "init.xyz", steps=100000, nbeads=2))
    client = procs.client("--model", ani1x_path, "--structure", structure, "--unix", name)
    wait_for_rows(str(tmp_path / "sim.out"), 5, timeout=60, process=server)
    kill(server)
    status = wait(client, 20)
    text = log_text(client)
    assert status == 1, text
    assert "lost the i-PI server" in text
    assert "served" in text and "Traceback" not in text


def serve_bytes(payload: bytes, n_atoms: int = 3):
    """Feed `payload` to a protocol client (not i-PI: a socket pair), as a broken server would."""
    server, client_side = socket.socketpair()
    server.sendall(payload)
    server.shutdown(socket.SHUT_WR)
    client = Client(client_side, compute=lambda cells, positions: [], n_atoms=n_atoms, log=lambda text: None)
    try:
        client.run()
    finally:
        client.close()
        server.close()


def header(text: str) -> bytes:
    return text.ljust(12).encode()


def init(parameters: str = "") -> bytes:
    return header("INIT") + np.int32(0).tobytes() + np.int32(len(parameters)).tobytes() + parameters.encode()


INIT = init()


def test_a_server_that_is_not_ipi():
    """Every size read from the socket is checked before anything is allocated."""
    with pytest.raises(ProtocolError, match="unexpected message b'HELLO, WORLD'"):
        serve_bytes(b"HELLO, WORLD")
    with pytest.raises(ProtocolError, match="INIT string of 1073741824 bytes, which cannot be right"):
        serve_bytes(header("INIT") + np.int32(0).tobytes() + np.int32(2**30).tobytes())
    with pytest.raises(ProtocolError, match="i-PI sends 1000000 atoms but the structure file has 3"):
        serve_bytes(INIT + header("POSDATA") + np.zeros(18).tobytes() + np.int32(1000000).tobytes())
    with pytest.raises(ProtocolError, match="-5 atoms, which cannot be right"):
        serve_bytes(INIT + header("POSDATA") + np.zeros(18).tobytes() + np.int32(-5).tobytes(), n_atoms=None)
    with pytest.raises(ProtocolError, match="invalid batch size"):
        serve_bytes(init("batch_size:1e9"))
    with pytest.raises(ProtocolError, match="batch size of 9999999"):
        serve_bytes(init("x:1, batch_size:9999999"))
    with pytest.raises(ProtocolError, match="forces before sending positions"):
        serve_bytes(INIT + header("GETFORCE"))
    with pytest.raises(ServerLost, match="lost the i-PI server: it closed the connection in the middle of a message"):
        serve_bytes(INIT + header("POSDATA") + np.zeros(5).tobytes())
    with pytest.raises(ServerLost, match="closed the connection without sending EXIT"):
        serve_bytes(INIT + header("STATUS"))
