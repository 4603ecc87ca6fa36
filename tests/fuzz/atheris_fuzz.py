"""Coverage-guided fuzzing with atheris (libFuzzer for Python) of the three byte-level readers.

hypothesis (the test_fuzz_*.py files) generates inputs from grammars; atheris instead mutates raw
bytes and keeps those that reach new branches of atomplug's own code, which finds inputs no grammar
thought of. Each target applies the same checks as its hypothesis twin (a result, or a clean error
naming the problem; never another exception, a hang or an unbounded buffer):

- units: any string through the Python unit parser and the TorchScript-compiled one (they agree);
- header: any bytes as a model file through `read_header` (the metadata reader: zip + JSON);
- ipi_protocol: any bytes from a fake i-PI server through the client's message reader.

Run: python tests/fuzz/atheris_fuzz.py --runs N [--target T ...] [--report FILE]. Each target runs
in its own process (libFuzzer exits the process when done) with crashes written to build/atheris/.
Exit status 1 when any target crashed; the report gives runs, seconds and coverage per target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["units", "header", "ipi_protocol"]


def one_input(target: str):
    """The function libFuzzer calls with each input of `target` (imports are instrumented first)."""
    import atheris

    with atheris.instrument_imports(include=["atomplug"]):
        import atomplug.core.archive  # noqa: F401
        import atomplug.core.units  # noqa: F401
        import atomplug.ipi_driver.protocol  # noqa: F401
    sys.path.insert(0, HERE)
    if target == "units":
        import test_fuzz_units as units

        def run(data: bytes) -> None:
            provider = atheris.FuzzedDataProvider(data)
            expression = provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 80))
            units.test_compiled_parser_agrees_with_python.hypothesis.inner_test(expression)

        return run
    if target == "header":
        import tempfile

        import test_fuzz_header as header

        path = os.path.join(tempfile.mkdtemp(prefix="atomplug-atheris-"), "model.pt")

        def run(data: bytes) -> None:
            with open(path, "wb") as handle:
                handle.write(data)
            header.check_reader(path, load=False)

        return run
    if target == "ipi_protocol":
        import test_fuzz_ipi_protocol as protocol

        def run(data: bytes) -> None:
            protocol.converse(data)

        return run
    raise SystemExit(f"unknown target {target!r}: choose from {', '.join(TARGETS)}")


def write_seeds(target: str, corpus: str) -> None:
    """Valid inputs to start from, so that mutations begin inside the reader's deep states: a real
    LJ export (header), whole i-PI conversations, single and batched (ipi_protocol), unit
    expressions (units; the first byte is the provider's length prefix)."""
    import struct

    import numpy as np

    seeds: Dict[str, bytes] = {}
    if target == "units":
        for i, text in enumerate(["eV/Angstrom^3", "kcal/mol", "(1e-3*eV)^2/(nm*fs)", "Hartree/Bohr", "m^-2*kg"]):
            seeds[f"unit-{i}"] = bytes([len(text)]) + text.encode()
    elif target == "header":
        from atomplug.examples.lj import export_lj

        path = os.path.join(corpus, "lj.pt")
        if not os.path.exists(path):
            export_lj(path, epsilon=0.0104, sigma=3.4, cutoff=5.0, types=[18])
        return
    else:
        sys.path.insert(0, HERE)
        from test_fuzz_ipi_protocol import EXIT, GETFORCE, INIT, POSDATA, STATUS, int32

        cell = np.eye(3).ravel().tolist() * 2
        for batch in (1, 2):
            positions = np.arange(9.0).tobytes()
            init = f"batch_size:{batch}".encode() if batch > 1 else b""
            stream = STATUS + INIT + int32(0) + int32(len(init)) + init + STATUS + POSDATA
            if batch == 1:
                stream += struct.pack("=18d", *cell) + int32(3) + positions
            else:
                stream += int32(3) + struct.pack("=18d", *cell) * 2 + positions * 2
            seeds[f"conversation-{batch}"] = stream + STATUS + GETFORCE + STATUS + EXIT
    for name, data in seeds.items():
        with open(os.path.join(corpus, name), "wb") as handle:
            handle.write(data)


def max_length(corpus: str) -> int:
    """Inputs may grow to twice the largest seed (a model file is ~20 kB), at least 8 kB."""
    sizes = [os.path.getsize(os.path.join(corpus, name)) for name in os.listdir(corpus)]
    return max([8192] + [2 * size for size in sizes])


def fuzz(target: str, libfuzzer_args: List[str]) -> None:
    """In the child process: hand control to libFuzzer (which exits the process)."""
    import atheris

    run = one_input(target)
    atheris.Setup([sys.argv[0]] + libfuzzer_args, run)
    atheris.Fuzz()


def campaign(targets: List[str], runs: int, artifacts: str) -> Dict[str, dict]:
    """Run each target in a child process; parse libFuzzer's summary lines."""
    os.makedirs(artifacts, exist_ok=True)
    results: Dict[str, dict] = {}
    for target in targets:
        corpus = os.path.join(artifacts, f"corpus-{target}")
        os.makedirs(corpus, exist_ok=True)
        write_seeds(target, corpus)
        command = [
            sys.executable,
            __file__,
            "--child",
            target,
            f"-runs={runs}",
            f"-max_len={max_length(corpus)}",
            "-timeout=30",
            f"-artifact_prefix={artifacts}/{target}-",
            "-print_final_stats=1",
            corpus,
        ]
        start = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, errors="replace")
        seconds = time.perf_counter() - start
        log = process.stderr
        done = re.search(r"Done (\d+) runs", log)
        coverage = re.findall(r"cov: (\d+)", log)
        results[target] = {
            "runs": int(done.group(1)) if done else 0,
            "seconds": round(seconds, 1),
            "coverage_edges": int(coverage[-1]) if coverage else 0,
            "exit_status": process.returncode,
        }
        status = "ok" if process.returncode == 0 and done else "FAILED"
        print(
            f"atheris {target:>13}: {results[target]['runs']:>7} runs in {seconds:6.1f} s, "
            f"{results[target]['coverage_edges']} edges covered: {status}",
            flush=True,
        )
        if status != "ok":
            print(log[-4000:], file=sys.stderr, flush=True)
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        fuzz(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--artifacts", default=os.path.join("build", "atheris"))
    parser.add_argument("--report", help="write the counts as JSON here")
    args = parser.parse_args(argv)
    results = campaign(args.target or TARGETS, args.runs, args.artifacts)
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(results, handle, indent=1)
    failed = [t for t, r in results.items() if r["exit_status"] != 0 or r["runs"] < args.runs]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
