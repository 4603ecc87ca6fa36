"""`atomplug-ipi`: an i-PI socket client that evaluates an exported atomplug model.

    atomplug-ipi --model model.pt --structure init.xyz --unix NAME
    atomplug-ipi --model model.pt --structure init.xyz --address HOST --port N
    atomplug-ipi --model model.pt --structure init.extxyz --charge 1 --spin 2 --variant ccsdt --unix NAME

A model's requested inputs come from the structure file (masses; per-atom charges from an extxyz
`initial_charges` column) and from --charge / --spin; velocities are not sent by i-PI, so a model
that requests them is refused.

Exit status: 0 when i-PI sends EXIT; 1 when i-PI never comes up, goes away without EXIT or sends
something unexpected, or the model fails on a structure; 2 for bad input (options, model file,
structure file). Several clients may connect to the same address: i-PI shares the beads (and
any other force requests) among them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

DEFAULT_CONNECT_TIMEOUT = 60.0


def log(text: str) -> None:
    print(text, flush=True)


def error_exit(text: str, status: int) -> int:
    print(f"atomplug-ipi: error: {text}", file=sys.stderr, flush=True)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomplug-ipi",
        description="Serve an exported atomplug model to an i-PI server (energy, forces, virial, extras).",
        epilog="Exit status: 0 on i-PI's EXIT; 1 if the server never comes up, disappears, or the model "
        "fails on a structure; 2 for bad input.",
    )
    parser.add_argument(
        "--model", "-m", required=True, help="exported atomplug model (.pt), or its compiled package (.pt2)"
    )
    parser.add_argument(
        "--structure",
        "-s",
        required=True,
        help="the structure i-PI simulates (any ASE-readable file; gives the elements and periodicity: "
        "an i-PI xyz with a CELL comment or an extxyz with a lattice is periodic, a plain xyz is a molecule)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--unix", "-u", metavar="NAME", help="UNIX socket name, as in <ffsocket mode='unix'><address>NAME"
    )
    where.add_argument("--address", "-a", metavar="HOST", help="INET host of the i-PI server")
    parser.add_argument("--port", "-p", type=int, help="INET port (with --address)")
    parser.add_argument(
        "--sockets-prefix", "-S", default="/tmp/ipi_", help="prefix of UNIX socket files (default /tmp/ipi_)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument(
        "--extras",
        default="",
        help="comma-separated model outputs to return in i-PI's extras JSON, e.g. "
        "energy/per_atom,energy_uncertainty (append /per_atom for per-atom values)",
    )
    parser.add_argument(
        "--non-conservative",
        action="store_true",
        help="use the model's non_conservative_forces (and non_conservative_stress) outputs instead of "
        "energy gradients",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for this client (default: torch's choice, all cores); with several "
        "clients on one machine give each cores/clients, or they slow each other down badly",
    )
    parser.add_argument("--skin", type=float, default=0.5, help="neighbor-list Verlet skin in Angstrom (default 0.5)")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"seconds to wait for the i-PI server to come up (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--charge",
        type=float,
        default=None,
        help="total charge of the system in e, for a model that requests total_charge (default: charge= in the "
        "extxyz comment line of --structure)",
    )
    parser.add_argument(
        "--spin",
        type=float,
        default=None,
        help="spin multiplicity 2S+1 (1 for a singlet), for a model that requests spin_multiplicity (default: "
        "spin= in the extxyz comment line of --structure)",
    )
    parser.add_argument(
        "--variant",
        default="",
        help="the model's output variant to use, e.g. ccsdt for energy/ccsdt (applies to the energy and to every "
        "extra that has it)",
    )
    parser.add_argument("--name", help='label added as "client" to the extras JSON (which client computed what)')
    parser.add_argument("--verbose", "-v", action="store_true", help="log every protocol message")
    return parser


def _terminate(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.address is not None and args.port is None:
        return error_exit("--address needs --port (the port in <ffsocket mode='inet'><port>)", 2)
    if args.port is not None and not 0 < args.port < 65536:
        return error_exit(f"--port {args.port} is not a TCP port (1-65535)", 2)
    if args.connect_timeout < 0:
        return error_exit("--connect-timeout must be zero or positive", 2)
    if args.skin < 0:
        return error_exit("--skin must be zero or positive", 2)
    if args.threads is not None and args.threads < 1:
        return error_exit("--threads must be at least 1", 2)
    signal.signal(signal.SIGTERM, _terminate)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    from .evaluator import DriverError, IPIEvaluator
    from .protocol import Client, ConnectError, ProtocolError, ServerLost, connect, describe_address, guard_connection

    try:
        evaluator = IPIEvaluator(
            args.model,
            args.structure,
            device=args.device,
            extras=args.extras,
            non_conservative=args.non_conservative,
            skin=args.skin,
            name=args.name,
            charge=args.charge,
            spin=args.spin,
            variant=args.variant,
        )
    except DriverError as error:
        return error_exit(str(error), 2)
    log(evaluator.describe())
    log(f"atomplug-ipi: model warmed up in {evaluator.warm_up():.1f} s")

    where = describe_address(args.unix, args.address, args.port, args.sockets_prefix)
    try:
        sock = connect(
            args.unix, args.address, args.port, prefix=args.sockets_prefix, timeout=args.connect_timeout, log=log
        )
    except ConnectError as error:
        return error_exit(str(error), 1)
    except KeyboardInterrupt:
        return error_exit("interrupted while waiting for i-PI", 130)
    log(f"atomplug-ipi: connected to i-PI at {where}")
    guard = guard_connection(sock)

    client = Client(sock, evaluator.batch, evaluator.n_atoms, verbose=args.verbose, log=log)
    status = 0
    try:
        client.run()
        log(f"atomplug-ipi: i-PI sent EXIT; {summary(client, evaluator)}")
    except ServerLost as error:
        status = error_exit(f"{error}; {summary(client, evaluator)}", 1)
    except ProtocolError as error:
        status = error_exit(str(error), 1)
    except DriverError as error:
        status = error_exit(str(error), 1)
    except KeyboardInterrupt:
        status = error_exit(f"interrupted; {summary(client, evaluator)}", 130)
    except SystemExit as stop:
        status = error_exit(f"terminated by a signal; {summary(client, evaluator)}", int(stop.code or 1))
    finally:
        client.close()
        if guard is not None:
            os.close(guard)
    return status


def summary(client, evaluator) -> str:
    """'served 40 structure(s) in 40 request(s) (per request: model 2.10 ms, client 0.052 ms
    CPU / 0.081 ms wall)': model = the core's entry point with neighbor lists; client =
    everything else this client does (protocol, conversions), as CPU time of its thread and as
    wall time (which also counts time the machine gave to other processes)."""
    requests = max(client.n_requests, 1)
    model_ms = 1e3 * evaluator.model_seconds / requests
    client_ms = 1e3 * max(client.busy_seconds - evaluator.model_seconds, 0.0) / requests
    client_cpu_ms = 1e3 * max(client.busy_cpu_seconds - evaluator.model_cpu_seconds, 0.0) / requests
    text = f"served {client.n_structures} structure(s) in {client.n_requests} request(s)"
    if client.n_requests:
        text += f" (per request: model {model_ms:.2f} ms, client {client_cpu_ms:.3f} ms CPU / {client_ms:.3f} ms wall)"
    return text


if __name__ == "__main__":
    sys.exit(main())
