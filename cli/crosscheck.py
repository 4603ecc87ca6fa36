"""`atomplug crosscheck`: one model, one structure, every engine; do they compute the same thing?

ASE (the `AtomplugCalculator`, in this process) is the reference. Each other engine runs for real
in its own process: an i-PI server with the `atomplug-ipi` client, LAMMPS (`lmp`, under `mpiexec`
for several ranks) with `pair_style atomplug`, and `plumed driver` with the model's energy as an
ATOMPLUG collective variable biased by BIASVALUE (so PLUMED's forces and virial are the model's).
Every engine's numbers are brought back to eV, Angstrom and the structure's own orientation and
atom order by the engine's own package (`<engine>/single_point.py`, which returns plain arrays), then
compared here.

Differences are relative to the reference's largest magnitude: |dE|/|E|, max|dF|/max|F| and
max|dW|/max|W| over the six independent virial components.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

# Relative tolerances by model dtype. A float64 model differs between engines only by summation
# order (~1e-14). A float32 model also sees float32 rounding of the positions, which each engine
# holds in another frame or image (eps 6e-8 x box length ~1e-6 A on a pair vector); a steep pair
# term (LJ: d ln f / d ln r ~ 13) and cancellation in net forces make that ~1e-5 of max|F|
# (measured: 9e-6 for 256 argon atoms in a 21 A box), hence 1e-4.
TOLERANCES = {"float64": 1e-10, "float32": 1e-4}

ENGINES = ("ase", "ipi", "lammps", "plumed")


@dataclass
class EngineResult:
    """One engine's single-point answer in eV, Angstrom and the input's orientation and atom order.

    `virial` is W = -stress * volume (ASE's sign), 3x3. `skipped` says why an engine could not run
    this structure (not a failure); `error` holds an engine failure (a failure of the check).
    """

    engine: str
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    virial: Optional[np.ndarray] = None
    seconds: float = 0.0
    skipped: Optional[str] = None
    error: Optional[str] = None


@dataclass
class Comparison:
    engine: str
    engine_energy: Optional[float] = None  # eV, the engine's own value
    energy: Optional[float] = None  # relative differences against the reference
    forces: Optional[float] = None
    virial: Optional[float] = None
    seconds: float = 0.0
    status: str = "ok"  # ok, DIFFERS, FAILED, skipped
    note: str = ""


@dataclass
class Report:
    model: str
    structure: str
    n_atoms: int
    dtype: str
    tolerance: float
    reference: EngineResult
    comparisons: List[Comparison] = field(default_factory=list)
    variant: str = ""
    inputs: List[str] = field(default_factory=list)  # the model's inputs, read from the structure

    @property
    def compared(self) -> List[Comparison]:
        return [c for c in self.comparisons if c.status != "skipped"]

    @property
    def passed(self) -> bool:
        """Every engine that ran agrees with ASE, and at least one ran."""
        return self.reference.error is None and bool(self.compared) and all(c.status == "ok" for c in self.compared)


def virial_components(virial: np.ndarray) -> np.ndarray:
    """The six independent components (xx, yy, zz, yz, xz, xy) of a virial's symmetric part.

    i-PI keeps only the upper triangle and LAMMPS six components, so the symmetric part is what
    every engine can report; for rotation-invariant models the virial is symmetric anyway.
    """
    symmetric = 0.5 * (virial + virial.T)
    return symmetric[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    """max|value - reference| / max|reference| (absolute when the reference is all zero)."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"shape {value.shape} differs from the reference's {reference.shape}")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    difference = float(np.max(np.abs(value - reference))) if reference.size else 0.0
    return difference / scale if scale > 0.0 else difference


def compare(reference: EngineResult, result: EngineResult, tolerance: float) -> Comparison:
    comparison = Comparison(result.engine, seconds=result.seconds)
    if result.skipped:
        comparison.status, comparison.note = "skipped", result.skipped
        return comparison
    if result.error:
        comparison.status, comparison.note = "FAILED", result.error
        return comparison
    comparison.engine_energy = result.energy
    comparison.energy = relative_difference(result.energy, reference.energy)
    comparison.forces = relative_difference(result.forces, reference.forces)
    if result.virial is not None and reference.virial is not None:
        comparison.virial = relative_difference(virial_components(result.virial), virial_components(reference.virial))
    worst = [
        name
        for name in ("energy", "forces", "virial")
        if getattr(comparison, name) is not None and not getattr(comparison, name) <= tolerance
    ]
    if worst:
        comparison.status = "DIFFERS"
        comparison.note = f"{', '.join(worst)} beyond {tolerance:.0e}"
    return comparison


def reference_with_ase(model_path: str, atoms, device: Optional[str] = None, variant: str = "") -> EngineResult:
    """The AtomplugCalculator's energy, forces and virial (from the stress when periodic, else
    W = sum_i r_i (x) F_i, which equals the pair virial for an isolated structure), with the
    model's inputs read from `atoms` (ASE's conventions) and the energy of `variant`."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from atomplug.ase_calculator import AtomplugCalculator
    from atomplug.core.virial import virial_from_forces

    start = time.perf_counter()
    result = EngineResult("ASE")
    try:
        calculator = AtomplugCalculator(model_path, device=device, variant=variant)
        atoms = atoms.copy()
        atoms.calc = calculator
        result.energy = float(atoms.get_potential_energy())
        result.forces = atoms.get_forces().copy()
        if atoms.pbc.all():
            result.virial = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume()
        elif not atoms.pbc.any():
            result.virial = virial_from_forces(atoms.positions, result.forces)
    except Exception as error:  # the reference failing is reported, not raised
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = time.perf_counter() - start
    return result


EngineRunner = Callable[[str, object, str], EngineResult]


def _as_result(label: str, evaluate: Callable[..., dict], **options) -> EngineRunner:
    """An engine's single-point runner (plain dict: energy, forces, virial, or skipped) as an
    EngineRunner."""

    def run(model_path: str, atoms, workdir: str) -> EngineResult:
        values = evaluate(model_path, atoms, workdir, **options)
        if values.get("skipped"):
            return EngineResult(label, skipped=str(values["skipped"]))
        virial = values.get("virial")
        return EngineResult(
            label,
            energy=float(values["energy"]),
            forces=np.asarray(values["forces"]),
            virial=None if virial is None else np.asarray(virial),
        )

    return run


def engine_runners(ranks: Sequence[int], variant: str = "") -> Dict[str, EngineRunner]:
    """label -> runner(model_path, atoms, workdir) for every engine but the ASE reference. Each
    engine reads the model's inputs from `atoms` by ASE's conventions and uses `variant`."""
    from atomplug.ipi_driver.single_point import evaluate_with_ipi
    from atomplug.lammps_plugin.single_point import evaluate_with_lammps
    from atomplug.plumed_cv.single_point import evaluate_with_plumed

    options = {"variant": variant} if variant else {}  # no variant: the engines' calls as before
    runners: Dict[str, EngineRunner] = {"ipi": _as_result("ipi", evaluate_with_ipi, **options)}
    for count in ranks:
        runners[f"lammps:{count}"] = _as_result(f"lammps:{count}", evaluate_with_lammps, ranks=count, **options)
    runners["plumed"] = _as_result("plumed", evaluate_with_plumed, **options)
    return runners


def crosscheck(
    model_path: str,
    atoms,
    *,
    ranks: Sequence[int] = (1, 2),
    engines: Sequence[str] = ENGINES,
    tolerance: Optional[float] = None,
    workdir: Optional[str] = None,
    models: Optional[Dict[str, str]] = None,
    structure_name: str = "",
    progress: Optional[Callable[[str], None]] = None,
    variant: str = "",
    package: Optional[str] = None,
) -> Report:
    """Evaluate `atoms` with `model_path` in every engine and compare with ASE.

    The model's requested inputs come from `atoms` as ASE reads them (initial charges, masses,
    velocities, info["charge"], info["spin"]) and go to every engine; `variant` picks the model's
    output variant in every engine.

    `models` may give another model file for one engine (key 'ipi', 'lammps' or 'plumed'): the
    way to check that a re-export, a float32 version or a modified model computes the same.
    Engine work files go to `workdir` (a temporary directory, removed afterwards, by default).
    `package`: a compiled package of the model (`atomplug compile`) that every engine, ASE
    included, also runs ("<engine>+compiled" rows), against the same TorchScript reference.
    """
    from atomplug.core.archive import read_header

    header = read_header(model_path)
    dtype = header["capabilities"].get("dtype", "float64")
    tolerance = TOLERANCES.get(dtype, TOLERANCES["float32"]) if tolerance is None else tolerance
    unknown = [name for name in engines if name not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if not ranks or any(int(n) < 1 for n in ranks):
        raise ValueError(f"rank counts must be positive integers, got {list(ranks)}")
    models = dict(models or {})
    for name, path in models.items():
        if name not in ENGINES[1:]:
            raise ValueError(f"a model override is for 'ipi', 'lammps' or 'plumed', not {name!r}")
        read_header(path)  # a clear error now rather than in an engine
    if package is not None and "package" not in read_header(package):
        raise ValueError(f"{package!r} is not a compiled package: make one with `atomplug compile {model_path}`")
    say = progress or (lambda text: None)

    say("ASE (reference)")
    reference = reference_with_ase(model_path, atoms, variant=variant)
    report = Report(os.path.abspath(model_path), structure_name, len(atoms), dtype, tolerance, reference)
    report.variant = variant
    report.inputs = list(header["capabilities"].get("inputs", {}))
    if reference.error:
        return report

    own_workdir = workdir is None
    workdir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="atomplug-crosscheck-")
    runs = [(label, runner, "") for label, runner in engine_runners(ranks, variant).items()]
    if package is not None:
        ase_runner = lambda path, atoms, _workdir: reference_with_ase(path, atoms, variant=variant)  # noqa: E731
        runs += [("ase", ase_runner, package)] + [(label, runner, package) for label, runner, _ in runs]
    try:
        for label, runner, compiled in runs:
            engine = label.split(":")[0]
            if engine not in engines:
                continue
            name = label + ("+compiled" if compiled else "")
            say(name.replace("lammps:", "LAMMPS, ranks=").replace("ipi", "i-PI").replace("plumed", "PLUMED"))
            directory = os.path.join(workdir, name.replace(":", "-"))
            os.makedirs(directory, exist_ok=True)
            start = time.perf_counter()
            try:
                result = runner(compiled or models.get(engine, model_path), atoms, directory)
            except Exception as error:  # an engine failing is a result of the check
                result = EngineResult(name, error=f"{type(error).__name__}: {error}")
            result.engine, result.seconds = name, time.perf_counter() - start
            report.comparisons.append(compare(reference, result, tolerance))
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_report(report: Report) -> str:
    """The table a user reads: one row per engine, differences relative to ASE, and a verdict."""
    reference = report.reference
    lines = [
        f"model      {report.model} ({report.dtype})" + (f", variant {report.variant}" if report.variant else ""),
        f"structure  {report.structure or '(given)'}: {report.n_atoms} atoms",
    ]
    if report.inputs:
        lines.append(f"inputs     {', '.join(report.inputs)} (from the structure, as ASE reads them)")
    if reference.error:
        lines.append(f"reference (ASE) FAILED: {reference.error}")
        lines.append("verdict: FAIL (the reference could not be computed)")
        return "\n".join(lines)
    force_scale = float(np.max(np.abs(reference.forces))) if reference.forces.size else 0.0
    lines.append(
        f"reference  ASE: E = {reference.energy:.10f} eV, max|F| = {force_scale:.6f} eV/A"
        + (
            ""
            if reference.virial is None
            else f", max|W| = {np.max(np.abs(virial_components(reference.virial))):.6f} eV"
        )
    )
    lines.append("")
    header = (
        f"{'engine':<18}{'energy (eV)':>20}{'|dE|/|E|':>11}{'dF/max|F|':>11}{'dW/max|W|':>11}{'time (s)':>10}  status"
    )
    lines.append(header)
    lines.append("-" * len(header))
    lines.append(
        f"{'ASE (reference)':<18}{reference.energy:>20.10f}{'':>11}{'':>11}{'':>11}{reference.seconds:>10.2f}  reference"
    )
    for comparison in report.comparisons:
        energy = "" if comparison.engine_energy is None else f"{comparison.engine_energy:.10f}"
        status = comparison.status + (f" ({comparison.note})" if comparison.note else "")
        lines.append(
            f"{_label(comparison.engine):<18}{energy:>20}{_number(comparison.energy):>11}"
            f"{_number(comparison.forces):>11}{_number(comparison.virial):>11}{comparison.seconds:>10.2f}  {status}"
        )
    lines.append("")
    if report.passed:
        lines.append(
            f"verdict: PASS: {len(report.compared)} engine run(s) agree with ASE within {report.tolerance:.0e} "
            f"relative ({report.dtype} tolerance)"
        )
    elif not report.compared:
        lines.append("verdict: FAIL: no engine besides ASE ran, so nothing was compared")
    else:
        bad = [_label(c.engine) for c in report.comparisons if c.status not in ("ok", "skipped")]
        lines.append(f"verdict: FAIL: {', '.join(bad)} beyond {report.tolerance:.0e} relative or failed")
    return "\n".join(lines)


def _label(engine: str) -> str:
    if engine.endswith("+compiled"):
        return _label(engine[: -len("+compiled")]) + " compiled"
    if engine.startswith("lammps:"):
        count = int(engine.split(":")[1])
        return f"LAMMPS {count} rank" + ("s" if count > 1 else "")
    return {"ipi": "i-PI", "plumed": "PLUMED", "ase": "ASE"}.get(engine, engine)


def plot_report(report: Report, path: str) -> None:
    """Bars of the relative differences per engine (log scale) against the tolerance line.
    Written to a temporary file and renamed, so a failed write leaves no half-written plot
    (raises OutputError, an OSError naming the fix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-18  # where an exact zero is drawn
    rows = [c for c in report.comparisons if c.status != "skipped"]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2.0), 4.2))
    quantities = [("energy", "energy"), ("forces", "forces"), ("virial", "virial")]
    width = 0.26
    for k, (attribute, label) in enumerate(quantities):
        heights, positions = [], []
        for index, comparison in enumerate(rows):
            value = getattr(comparison, attribute)
            if value is None:
                continue
            heights.append(max(value, floor))
            positions.append(index + (k - 1) * width)
        axes.bar(positions, heights, width, label=label, bottom=floor / 10)
    axes.axhline(report.tolerance, color="crimson", linestyle="--", label=f"tolerance {report.tolerance:.0e}")
    axes.set_yscale("log")
    axes.set_ylim(floor / 10, max(1.0, 10 * report.tolerance))
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([_label(c.engine) + ("" if c.status == "ok" else f"\n{c.status}") for c in rows])
    axes.set_ylabel("relative difference to ASE")
    verdict = "PASS" if report.passed else "FAIL"
    axes.set_title(
        f"atomplug crosscheck: {os.path.basename(report.model)} on "
        f"{report.structure or 'structure'} ({report.n_atoms} atoms): {verdict}",
        fontsize=10,
    )
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    from atomplug.core.files import write_atomically

    file_format = (os.path.splitext(path)[1].lstrip(".") or "png").lower()
    try:
        write_atomically(
            path,
            lambda handle: figure.savefig(handle, format=file_format, dpi=120),
            tag="plot",
            what="the crosscheck plot",
        )
    finally:
        plt.close(figure)
