"""Fuzzing the i-PI message reader: whatever a server sends, the client answers correctly, stops
with EXIT, or raises ProtocolError / ServerLost; it never hangs and never allocates more than the
sizes it has checked.

A fake server (a thread on one end of a socket pair) sends a byte stream (random bytes, random
messages with any announced sizes, or a valid conversation with random numbers) and then closes its
sending side, so a client that waits for more must notice the end. The client runs in a thread
with a watchdog, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List, Optional

import numpy as np
import pytest
from fuzzing import counted, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from atomplug.ipi_driver.protocol import (
    EXIT,
    FORCEREADY,
    GETFORCE,
    HAVEDATA,
    INIT,
    MAX_BATCH,
    MAX_INIT_BYTES,
    NEEDINIT,
    POSDATA,
    READY,
    STATUS,
    Client,
    ProtocolError,
    ServerLost,
)

TIME_LIMIT = 10.0  # seconds for one conversation: far above its milliseconds, far below a hang
MAX_ATOMS = 1000  # the fuzzed client's limit when it does not know the atom count
HEADERS = [STATUS, INIT, POSDATA, GETFORCE, EXIT, READY, FORCEREADY, b"status      ", b"EXIT", b"\x00" * 12]


def int32(value: int) -> bytes:
    return struct.pack("=i", value)


class FakeServer(threading.Thread):
    """Send `stream`, half-close, and collect everything the client answers until it closes."""

    def __init__(self, sock: socket.socket, stream: bytes):
        super().__init__(daemon=True)
        self.sock = sock
        self.stream = stream
        self.received = bytearray()

    def run(self) -> None:
        self.sock.settimeout(TIME_LIMIT)
        try:
            self.sock.sendall(self.stream)
            self.sock.shutdown(socket.SHUT_WR)
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                self.received += chunk
        except OSError:  # the client closed while we were still sending: it stopped reading
            pass
        finally:
            self.sock.close()


def zero_results(cells, positions):
    return [(0.0, np.zeros_like(p), np.zeros((3, 3)), "") for p in positions]


def converse(stream: bytes, compute=zero_results, n_atoms: Optional[int] = None, max_atoms: int = MAX_ATOMS):
    """Run a Client against a fake server sending `stream`. Returns (outcome, client, answers):
    outcome is "exit", a ProtocolError or a ServerLost; any other exception fails the test."""
    server_end, client_end = socket.socketpair()
    server = FakeServer(server_end, stream)
    client = Client(client_end, compute, n_atoms, max_atoms=max_atoms, log=lambda text: None)
    outcome: List[object] = []

    def serve():
        try:
            client.run()
            outcome.append("exit")
        except (ProtocolError, ServerLost) as error:
            assert str(error)
            outcome.append(error)
        except BaseException as error:  # reported below, with the stream
            outcome.append(error)

    worker = threading.Thread(target=serve, daemon=True)
    start = time.perf_counter()
    server.start()
    worker.start()
    worker.join(TIME_LIMIT)
    hung = worker.is_alive()
    client_end.close()  # unblocks a hung client (and ends the server's drain)
    server.join(TIME_LIMIT)
    worker.join(TIME_LIMIT)
    assert not hung, f"the client hung on {stream[:200]!r}"
    assert outcome and (outcome[0] == "exit" or isinstance(outcome[0], (ProtocolError, ServerLost))), (
        f"unclean error {outcome!r} on {stream[:200]!r}"
    )
    assert time.perf_counter() - start < TIME_LIMIT
    # the buffer never outgrew the largest message whose sizes had been checked
    largest = max(1 << 16, MAX_INIT_BYTES, 8 * (18 * MAX_BATCH + 3 * max_atoms))
    assert len(client._buffer) <= 2 * largest
    return outcome[0], client, bytes(server.received)


# ---- random streams -----------------------------------------------------------------------------

SIZES = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([0, 1, 2, 3, 108, MAX_ATOMS, MAX_ATOMS + 1, MAX_INIT_BYTES, MAX_INIT_BYTES + 1, 2**31 - 1, -1]),
    st.integers(0, 40),
)
FLOATS = st.floats(width=64, allow_nan=True, allow_infinity=True)


@st.composite
def messages(draw) -> bytes:
    """One message: a header (ours, i-PI's, or garbage) and a payload whose sizes can say anything."""
    kind = draw(st.sampled_from(["status", "init", "posdata", "posdata-batch", "getforce", "exit", "header", "bytes"]))
    if kind == "status":
        return STATUS
    if kind == "getforce":
        return GETFORCE
    if kind == "exit":
        return EXIT
    if kind == "header":
        return draw(st.one_of(st.sampled_from(HEADERS), st.binary(min_size=12, max_size=12)))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "init":
        text = draw(
            st.one_of(
                st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
                st.builds(lambda n: f"batch_size:{n}".encode(), st.one_of(SIZES, st.text(max_size=6))),
            )
        )
        length = draw(st.one_of(st.just(len(text)), SIZES))
        return INIT + int32(draw(SIZES)) + int32(length) + text
    n_atoms = draw(SIZES)
    count = max(0, min(n_atoms, 40)) if draw(st.booleans()) else draw(st.integers(0, 40))
    values = draw(st.lists(FLOATS, min_size=3 * count, max_size=3 * count))
    positions = struct.pack(f"={len(values)}d", *values)
    cells = struct.pack("=18d", *draw(st.lists(FLOATS, min_size=18, max_size=18)))
    if kind == "posdata":
        return POSDATA + cells + int32(n_atoms) + positions
    return POSDATA + int32(n_atoms) + cells * draw(st.integers(0, 4)) + positions


@st.composite
def streams(draw) -> bytes:
    """Random messages, sometimes after a valid start; the whole stream sometimes cut short."""
    prefix = b""
    if draw(st.booleans()):
        prefix = STATUS + INIT + int32(0) + int32(0)
    stream = prefix + b"".join(draw(st.lists(messages(), max_size=8)))
    if stream and draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]
    return stream


@fuzz_settings("ipi_protocol", 0.35, short=200)
@given(stream=streams(), n_atoms=st.sampled_from([None, 3, 108]))
@example(stream=STATUS + INIT + int32(0) + int32(0) + POSDATA + bytes(144) + int32(2**31 - 1), n_atoms=None)
@example(stream=STATUS + INIT + int32(0) + int32(2**31 - 1), n_atoms=None)
@example(stream=INIT + int32(0) + int32(-5), n_atoms=None)
@example(stream=INIT + int32(0) + int32(14) + b"batch_size:9999" + POSDATA + int32(1000), n_atoms=None)
@example(stream=INIT + int32(0) + int32(14) + b"batch_size:" + b"9" * 3, n_atoms=3)
@counted("ipi_protocol")
def test_random_messages_end_cleanly(stream, n_atoms):
    converse(stream, n_atoms=n_atoms)


@fuzz_settings("ipi_protocol", 0.40, short=150)
@given(stream=st.binary(max_size=2048))
@counted("ipi_protocol")
def test_random_bytes_end_cleanly(stream):
    outcome, _, _ = converse(stream)
    assert outcome != "exit" or EXIT in stream


# Six cases in all: listed, not fuzzed (hypothesis would stop after six and shrink the campaign).
@pytest.mark.parametrize("n_atoms", [10**6, 10**7, 2**31 - 1])
@pytest.mark.parametrize("header", ["single", "batch"])
def test_a_huge_announced_atom_count_allocates_nothing_when_the_structure_is_known(n_atoms, header):
    """The real client knows the atom count from its structure file: a larger announcement is
    refused before any buffer for it exists, however large the default limit."""
    if header == "single":
        stream = INIT + int32(0) + int32(0) + POSDATA + bytes(144) + int32(n_atoms)
    else:
        stream = INIT + int32(0) + int32(12) + b"batch_size:4" + POSDATA + int32(n_atoms)
    outcome, client, _ = converse(stream, n_atoms=108, max_atoms=10_000_000)
    assert isinstance(outcome, ProtocolError)
    assert len(client._buffer) == 1 << 16


# ---- valid conversations with random numbers ------------------------------------------------------


@st.composite
def conversations(draw):
    n_atoms = draw(st.integers(1, 24))
    batch = draw(st.sampled_from([1, 1, 2, 3]))
    cells = [np.array(draw(st.lists(FLOATS, min_size=18, max_size=18))) for _ in range(batch)]
    positions = [np.array(draw(st.lists(FLOATS, min_size=3 * n_atoms, max_size=3 * n_atoms))) for _ in range(batch)]
    extras = [draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=30)) for _ in range(batch)]
    return n_atoms, batch, cells, positions, extras


@fuzz_settings("ipi_protocol", 0.25, short=100)
@given(conversation=conversations())
@counted("ipi_protocol")
def test_valid_conversations_round_trip_every_bit(conversation):
    """STATUS, INIT, POSDATA, GETFORCE, EXIT with random numbers (NaN included): the evaluator gets
    exactly the bits i-PI sent, and i-PI gets exactly the bits the evaluator returned."""
    n_atoms, batch, cells, positions, extras = conversation
    init = f"batch_size:{batch}".encode() if batch > 1 else b""
    stream = STATUS + INIT + int32(7) + int32(len(init)) + init + STATUS
    if batch == 1:
        stream += POSDATA + cells[0].tobytes() + int32(n_atoms) + positions[0].tobytes()
    else:
        stream += (
            POSDATA + int32(n_atoms) + b"".join(c.tobytes() for c in cells) + b"".join(p.tobytes() for p in positions)
        )
    stream += STATUS + GETFORCE + STATUS + EXIT
    seen = []

    def compute(cell_list, position_list):
        seen.append(([c.copy() for c in cell_list], [p.copy() for p in position_list]))
        with np.errstate(all="ignore"):
            return [
                (float(k) + 0.5, p * 2.0 + 1.0, np.arange(9.0).reshape(3, 3) * (k + 1), extras[k])
                for k, p in enumerate(position_list)
            ]

    outcome, client, answers = converse(stream, compute, n_atoms=n_atoms)
    assert outcome == "exit"
    assert client.replica == 7 and client.batch_size == batch
    ((got_cells, got_positions),) = seen
    for k in range(batch):
        assert got_cells[k].tobytes() == cells[k][:9].tobytes()
        assert got_positions[k].tobytes() == positions[k].tobytes()
    # STATUS -> NEEDINIT, STATUS after INIT -> READY, STATUS after POSDATA -> HAVEDATA, GETFORCE -> FORCEREADY
    expected = NEEDINIT + READY + HAVEDATA + FORCEREADY
    expected += struct.pack(f"={batch}d", *[k + 0.5 for k in range(batch)]) + int32(n_atoms)
    with np.errstate(all="ignore"):
        expected += b"".join((p * 2.0 + 1.0).tobytes() for p in positions)
    expected += b"".join((np.arange(9.0) * (k + 1)).tobytes() for k in range(batch))
    for text in extras:
        encoded = text.encode("utf-8")
        expected += int32(len(encoded)) + encoded
    expected += READY  # the last STATUS, before EXIT
    assert answers == expected


def test_a_close_behind_buffered_messages_is_not_a_lost_server():
    """Regression (found by the round-trip fuzzer): the whole conversation, EXIT included, arrives
    before the model runs and the server then closes. The read-ahead before the model used to see
    the close and report a lost server; the buffered GETFORCE and EXIT must be answered first."""
    stream = STATUS + INIT + int32(0) + int32(0) + POSDATA + bytes(144) + int32(1) + bytes(24) + GETFORCE + EXIT
    outcome, client, answers = converse(stream, n_atoms=1)
    assert outcome == "exit"
    assert client.n_requests == 1 and answers.startswith(NEEDINIT + FORCEREADY)


def test_a_close_right_after_a_request_is_a_lost_server():
    """Positions, then the server closes without asking for forces: reported, not waited for."""
    stream = INIT + int32(0) + int32(0) + POSDATA + bytes(144) + int32(1) + bytes(24)
    outcome, _, _ = converse(stream, n_atoms=1)
    assert isinstance(outcome, ServerLost)
