"""The i-PI socket protocol, client side, over UNIX or INET sockets (no torch, no model here).

Every message starts with a 12-byte header, upper case and padded with spaces. The server polls
with STATUS; the client answers NEEDINIT (before INIT), READY, or HAVEDATA (results waiting).
  INIT      int32 replica id, int32 length, that many bytes of parameters (i-PI announces
            batching there as a `batch_size:N` token)
  POSDATA   9 float64 cell h (lattice vectors as columns), 9 float64 its inverse, int32 natoms,
            3*natoms float64 positions (atomic units);
            batched (batch_size N > 1): int32 natoms, N x (h, h^-1), N x 3*natoms positions
  GETFORCE  client answers FORCEREADY, float64 energy, int32 natoms, 3*natoms float64 forces,
            9 float64 virial, int32 length + bytes of the extras string;
            batched: FORCEREADY, N float64 energies, int32 natoms, N x forces, N x virial,
            N x (int32 length + bytes)
  EXIT      the client leaves
Binary values are in the machine's byte order (i-PI's server and the Python driver use numpy's
native order). Every size read from the socket is checked before anything is allocated.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

HEADER_LENGTH = 12
MAX_INIT_BYTES = 1 << 20
MAX_BATCH = 4096
_INT32 = struct.Struct("=i")
_ENERGY_ATOMS = struct.Struct("=di")  # FORCEREADY's energy and atom count (one structure)


def message(text: str) -> bytes:
    return text.upper().ljust(HEADER_LENGTH).encode("ascii")


STATUS = message("STATUS")
READY = message("READY")
NEEDINIT = message("NEEDINIT")
HAVEDATA = message("HAVEDATA")
INIT = message("INIT")
POSDATA = message("POSDATA")
GETFORCE = message("GETFORCE")
FORCEREADY = message("FORCEREADY")
EXIT = message("EXIT")

Result = Tuple[float, np.ndarray, np.ndarray, str]
Compute = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], List[Result]]


class ServerLost(Exception):
    """The i-PI server went away (closed the socket or died) without sending EXIT."""


class ProtocolError(Exception):
    """i-PI sent something this client cannot make sense of."""


class ConnectError(Exception):
    """No i-PI server to connect to (within the allowed wait, or an address that cannot work)."""


def describe_address(unix: Optional[str], host: Optional[str], port: Optional[int], prefix: str) -> str:
    if unix is not None:
        return f"UNIX socket {unix_path(unix, prefix)}"
    return f"INET socket {host}:{port}"


def unix_path(name: str, prefix: str = "/tmp/ipi_") -> str:
    """i-PI's UNIX sockets live at `<prefix><address>` (prefix /tmp/ipi_ unless changed)."""
    return name if name.startswith("/") else prefix + name


def connect(
    unix: Optional[str] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    prefix: str = "/tmp/ipi_",
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> socket.socket:
    """Connect to i-PI, waiting up to `timeout` seconds for a server that is not up yet."""
    if (unix is None) == (host is None):
        raise ConnectError("give either a UNIX socket name or an INET host and port")
    where = describe_address(unix, host, port, prefix)
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.05
    announced = False
    while True:
        if unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = unix_path(unix, prefix)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, int(port))
        try:
            # bounded even if a remote host drops the connection attempt silently
            sock.settimeout(max(deadline - time.monotonic(), 1.0))
            sock.connect(target)
            sock.settimeout(None)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionAbortedError, socket.timeout) as error:
            sock.close()
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                hint = ""
                if unix is not None and isinstance(error, ConnectionRefusedError):
                    hint = f" ({target} exists but nobody listens: a stale file from a dead i-PI run?)"
                raise ConnectError(
                    f"no i-PI server at {where} after waiting {timeout:g} s{hint}: start i-PI first, check "
                    "that <ffsocket> uses the same mode and address, or wait longer with --connect-timeout"
                ) from None
            if not announced:
                log(f"atomplug-ipi: waiting for i-PI at {where} (up to {timeout:g} s)")
                announced = True
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 1.0)
            continue
        except socket.gaierror as error:
            sock.close()
            raise ConnectError(f"cannot resolve host {host!r}: {error.strerror}") from None
        except OSError as error:
            sock.close()
            raise ConnectError(f"cannot connect to {where}: {error.strerror or error}") from None
        break
    if unix is None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
    return sock


def _keepalive(sock: socket.socket) -> None:
    """Notice a remote server host that vanished without closing the connection (~2 minutes)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# A tiny helper process (no torch: started with -I -S, it imports only the standard library)
# that holds a second handle on the connection. When atomplug-ipi ends, however it ends (EXIT,
# an error, SIGKILL, a crash in the model), the pipe from it closes; the helper then half-closes
# the connection, reads whatever i-PI still sends until i-PI closes its end, and closes. So the
# connection always ends with a FIN and an empty receive queue, never with a RST: i-PI 3.3.1
# does not catch a RST while waiting for forces (its socket thread dies and the run hangs),
# whereas a plain close makes it re-queue the request for its other clients.
_GUARD = """
import os, select, socket, sys, time
connection = socket.socket(fileno=int(sys.argv[1]))
os.read(int(sys.argv[2]), 1)
try:
    connection.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        ready = select.select([connection], [], [], max(0.0, deadline - time.monotonic()))[0]
        if not ready or not connection.recv(65536):
            break
except OSError:
    pass
connection.close()
"""


def guard_connection(sock: socket.socket) -> Optional[int]:
    """Start the helper that closes `sock` cleanly once this process is gone (see _GUARD).
    Returns the pipe's write end, to keep open for the life of the process (None if the helper
    could not start; then only the read-ahead protects i-PI)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(sock.fileno()), str(read_end)],
            pass_fds=(sock.fileno(), read_end),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    return write_end


class Client:
    """Answer i-PI's requests on a connected socket until EXIT.

    `compute(cells, positions)` gets lists of i-PI cells h [3, 3] and positions [n, 3] (atomic
    units) and returns one (energy, forces [n, 3], virial [3, 3] in i-PI's convention, extras
    string) per structure. `n_atoms`, when known, is checked against what i-PI sends.

    Incoming bytes go through one reusable buffer, filled with as much as has arrived, so a
    request (i-PI sends POSDATA, its payload and GETFORCE in one piece) costs one receive call;
    answers go out with one scatter-gather send, without joining the arrays first.
    """

    def __init__(
        self,
        sock: socket.socket,
        compute: Compute,
        n_atoms: Optional[int] = None,
        *,
        max_atoms: int = 10_000_000,
        verbose: bool = False,
        log: Callable[[str], None] = print,
    ):
        self.sock = sock
        self.compute = compute
        self.n_atoms = n_atoms
        self.max_atoms = max_atoms
        self.verbose = verbose
        self.log = log
        self.batch_size = 1
        self.initialized = False
        self.replica = None
        self.init_string = ""
        self.pending: Optional[List[bytes]] = None
        self.n_requests = 0
        self.n_structures = 0
        self.busy_seconds = 0.0  # wall time spent handling messages (not waiting for them)
        self.busy_cpu_seconds = 0.0  # CPU time of this thread spent handling messages
        self._buffer = bytearray(1 << 16)
        self._start = 0  # unread bytes are self._buffer[self._start:self._end]
        self._end = 0

    # ---- low level ------------------------------------------------------------------------------

    def _receive(self, flags: int = 0) -> int:
        """One receive call into the free end of the buffer; the number of bytes received."""
        view = memoryview(self._buffer)[self._end :]
        try:
            count = self.sock.recv_into(view, len(view), flags)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as error:
            raise ServerLost(f"lost the i-PI server: the connection broke ({error.strerror or error})") from None
        finally:
            view.release()
        self._end += count
        return count

    def _fill(self, size: int, at_header: bool = False) -> None:
        """Make `size` unread bytes available (size already checked by the caller)."""
        if self._end - self._start >= size:
            return
        if self._start + size > len(self._buffer):
            unread = self._buffer[self._start : self._end]
            if size > len(self._buffer):
                self._buffer = bytearray(max(size, 2 * len(self._buffer)))
            self._buffer[: len(unread)] = unread
            self._start, self._end = 0, len(unread)
        while self._end - self._start < size:
            try:
                count = self._receive()
            except socket.timeout:
                continue
            if count == 0:
                if at_header and self._end == self._start:
                    raise ServerLost(
                        "lost the i-PI server: it closed the connection without sending EXIT (it stopped or crashed)"
                    )
                raise ServerLost(
                    "lost the i-PI server: it closed the connection in the middle of a message (it stopped or crashed)"
                )

    def _take(self, size: int) -> int:
        """Consume `size` bytes; their offset in self._buffer (valid until the next _fill)."""
        self._fill(size)
        offset = self._start
        self._start += size
        return offset

    def _read_header(self) -> bytes:
        self._fill(HEADER_LENGTH, at_header=True)
        header = bytes(self._buffer[self._start : self._start + HEADER_LENGTH])
        self._start += HEADER_LENGTH
        return header

    def _read_ahead(self) -> None:
        """Take whatever else i-PI has already sent (the GETFORCE behind POSDATA) off the socket
        before the model runs.

        If this client is killed while computing, its socket then holds no unread data, so the
        kernel closes it with a FIN, which i-PI handles (it re-queues the request for another
        client), rather than a RST, which i-PI 3.3.1 does not catch while waiting for forces
        (its socket thread dies and the run hangs).
        """
        if self._end == len(self._buffer):
            if self._end - self._start >= len(self._buffer) // 2:
                return
            unread = self._buffer[self._start : self._end]
            self._buffer[: len(unread)] = unread
            self._start, self._end = 0, len(unread)
        try:
            count = self._receive(socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if count == 0 and self._end == self._start:
            raise ServerLost(
                "lost the i-PI server: it closed the connection while sending a request (it stopped or crashed)"
            )
        # A close behind messages already received (e.g. GETFORCE, EXIT) is noticed when they are
        # used up: the next _fill() receives the end of the stream again.

    def close(self) -> None:
        """Read whatever i-PI already sent, then close (a FIN, not a RST: see _read_ahead)."""
        try:
            for _ in range(1024):
                if not self.sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        except OSError:
            pass
        self.sock.close()

    def _send(self, parts: Sequence[bytes]) -> None:
        try:
            total = sum(len(part) for part in parts)
            sent = self.sock.sendmsg(parts) if len(parts) > 1 else self.sock.send(parts[0])
            if sent < total:  # a partial send (a large message, a full socket buffer): finish it
                self.sock.sendall(b"".join(bytes(part) for part in parts)[sent:])
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as error:
            raise ServerLost(f"lost the i-PI server while answering it ({error.strerror or error})") from None

    def _int32(self) -> int:
        return _INT32.unpack_from(self._buffer, self._take(4))[0]

    def _float64(self, count: int) -> np.ndarray:
        """`count` float64 values, copied out of the buffer."""
        offset = self._take(8 * count)
        return np.frombuffer(self._buffer, dtype=np.float64, count=count, offset=offset).copy()

    def _check_atoms(self, n_atoms: int) -> None:
        if n_atoms <= 0 or n_atoms > self.max_atoms:
            raise ProtocolError(f"i-PI announced {n_atoms} atoms, which cannot be right: is this an i-PI server?")
        if self.n_atoms is not None and n_atoms != self.n_atoms:
            raise ProtocolError(
                f"i-PI sends {n_atoms} atoms but the structure file has {self.n_atoms}: give atomplug-ipi "
                "the structure that i-PI simulates"
            )

    # ---- messages -------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until EXIT (returns) or until the server is lost (raises ServerLost)."""
        while True:
            header = self._read_header()
            start = time.perf_counter()
            start_cpu = time.thread_time()
            if self.verbose:
                self.log(f"atomplug-ipi: received {header.decode('ascii', 'replace').strip()}")
            if header == STATUS:
                if not self.initialized:
                    self._send([NEEDINIT])
                elif self.pending is not None:
                    self._send([HAVEDATA])
                else:
                    self._send([READY])
            elif header == INIT:
                self._init()
            elif header == POSDATA:
                if not self.initialized:
                    raise ProtocolError("i-PI sent positions before INIT")
                if self.batch_size > 1:
                    self._posdata_batch()
                else:
                    self._posdata()
            elif header == GETFORCE:
                if self.pending is None:
                    raise ProtocolError("i-PI asked for forces before sending positions")
                self._send(self.pending)
                self.pending = None
            elif header == EXIT:
                return
            else:
                raise ProtocolError(f"unexpected message {header!r} from the server: is this an i-PI server?")
            self.busy_seconds += time.perf_counter() - start
            self.busy_cpu_seconds += time.thread_time() - start_cpu

    def _init(self) -> None:
        self.replica = self._int32()
        length = self._int32()
        if length < 0 or length > MAX_INIT_BYTES:
            raise ProtocolError(f"i-PI announced an INIT string of {length} bytes, which cannot be right")
        offset = self._take(length)
        self.init_string = bytes(self._buffer[offset : offset + length]).decode("utf-8", errors="replace")
        for token in self.init_string.replace(",", " ").split():
            key, separator, value = token.partition(":")
            if separator and key.strip() == "batch_size":
                try:
                    batch = int(value)
                except ValueError:
                    raise ProtocolError(f"i-PI announced an invalid batch size {value!r}") from None
                if batch < 1 or batch > MAX_BATCH:
                    raise ProtocolError(f"i-PI announced a batch size of {batch}, outside 1..{MAX_BATCH}")
                self.batch_size = batch
        self.initialized = True
        self.pending = None

    def _posdata(self) -> None:
        offset = self._take(18 * 8 + 4)  # h, its inverse (unused), natoms
        h = np.frombuffer(self._buffer, dtype=np.float64, count=9, offset=offset).reshape(3, 3).copy()
        n_atoms = _INT32.unpack_from(self._buffer, offset + 18 * 8)[0]
        self._check_atoms(n_atoms)
        positions = self._float64(3 * n_atoms).reshape(n_atoms, 3)
        if self._end - self._start < HEADER_LENGTH:
            # else i-PI sent GETFORCE with POSDATA and waits for the answer: nothing more is queued
            self._read_ahead()
        results = self.compute([h], [positions])
        self.pending = self._pack(results, n_atoms, batched=False)

    def _posdata_batch(self) -> None:
        n_atoms = self._int32()
        self._check_atoms(n_atoms)
        batch = self.batch_size
        if batch * n_atoms > self.max_atoms:
            raise ProtocolError(f"i-PI announced {batch} structures of {n_atoms} atoms, which cannot be right")
        cells = self._float64(18 * batch).reshape(batch, 2, 3, 3)
        positions = self._float64(3 * n_atoms * batch).reshape(batch, n_atoms, 3)
        self._read_ahead()
        results = self.compute([cells[i, 0] for i in range(batch)], [positions[i] for i in range(batch)])
        self.pending = self._pack(results, n_atoms, batched=True)

    def _pack(self, results: List[Result], n_atoms: int, batched: bool) -> List[bytes]:
        """The FORCEREADY answer as a list of buffers (sent with one scatter-gather call)."""
        expected = self.batch_size if batched else 1
        if len(results) != expected:
            raise RuntimeError(f"the evaluator returned {len(results)} results for {expected} structures")
        if not batched:
            return self._pack_one(results[0], n_atoms)
        forces = [np.ascontiguousarray(r[1], dtype=np.float64) for r in results]
        virials = [np.ascontiguousarray(r[2], dtype=np.float64) for r in results]
        if any(f.size != 3 * n_atoms for f in forces) or any(v.size != 9 for v in virials):
            raise RuntimeError("the evaluator returned forces or a virial of the wrong size")
        parts = [
            FORCEREADY,
            struct.pack(f"={len(results)}d", *[float(r[0]) for r in results]),
            struct.pack("=i", n_atoms),
        ]
        parts.extend(memoryview(f).cast("B") for f in forces)
        parts.extend(memoryview(v).cast("B") for v in virials)
        for r in results:
            text = r[3].encode("utf-8") if r[3] else b""
            parts.append(struct.pack("=i", len(text)))
            if text:
                parts.append(text)
        self.n_requests += 1
        self.n_structures += len(results)
        return parts

    def _pack_one(self, result: Result, n_atoms: int) -> List[bytes]:
        """`_pack` for one structure (MD's every step), in three buffers: the same bytes."""
        energy, forces, virial, extras = result
        forces = np.ascontiguousarray(forces, dtype=np.float64)
        virial = np.ascontiguousarray(virial, dtype=np.float64)
        if forces.size != 3 * n_atoms or virial.size != 9:
            raise RuntimeError("the evaluator returned forces or a virial of the wrong size")
        text = extras.encode("utf-8") if extras else b""
        self.n_requests += 1
        self.n_structures += 1
        return [
            FORCEREADY + _ENERGY_ATOMS.pack(float(energy), n_atoms),
            memoryview(forces).cast("B"),
            virial.tobytes() + _INT32.pack(len(text)) + text,
        ]
