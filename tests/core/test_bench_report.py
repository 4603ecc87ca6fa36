"""The benchmark report writer (benchmarks/report.py) on made-up rows: what `make bench` writes
must say honestly which aims were met. No timing is measured or asserted here."""

import importlib.util
import math
import os
import sys

import pytest

REPORT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "report.py"
)


def _load_report():
    """benchmarks/ is not a package: load report.py by path, without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location("atomplug_benchmarks_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = _load_report()
Aim, BenchRow, EngineFailure = report.Aim, report.BenchRow, report.EngineFailure
render_markdown, write_report = report.render_markdown, report.write_report

CONTEXT = {"date": "2026-01-01 00:00 UTC", "machine": "2 cores, test CPU"}


def synthetic_rows():
    return [
        BenchRow(
            "core",
            "LJ, 864 Ar",
            "entry point",
            atomplug_ms=7.0,
            floor_ms=6.5,
            aims=[Aim(2, "atomplug / floor", 7.0 / 6.5, 1.1)],
        ),
        BenchRow(
            "ASE",
            "LJ, 864 Ar",
            "MD-like step",
            atomplug_ms=6.0,
            floor_ms=7.5,
            peer="metatomic-ase",
            peer_ms=12.0,
            aims=[Aim(3, "atomplug / floor", 0.8, 1.15), Aim(3, "metatomic-ase / atomplug", 2.0, 1.5, at_most=False)],
        ),
        BenchRow(
            "LAMMPS",
            "LJ, 2048 Ar",
            "2 ranks",
            atomplug_ms=5.0,
            floor_ms=4.0,
            peer="lj/cut, 2 ranks",
            peer_ms=0.6,
            aims=[Aim(4, "2-rank speedup", 1.3, 1.7, at_most=False, caveat="the cores were busy")],
        ),
        BenchRow(
            "i-PI",
            "LJ, 108 Ar",
            "NVT step",
            atomplug_ms=4.0,
            floor_ms=5.0,
            peer="i-PI -m metatomic",
            aims=[Aim(5, "client's own CPU per step", float("nan"), 0.3, unit="ms")],
        ),
    ]


def table_row(text: str, engine: str, timed: str) -> list:
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == engine and cells[2] == timed:
            return cells
    raise AssertionError(f"no row {engine} / {timed} in:\n{text}")


def test_aims_are_judged_in_their_direction():
    assert Aim(2, "ratio", 1.05, 1.1).met and not Aim(2, "ratio", 1.2, 1.1).met
    assert Aim(4, "speedup", 1.8, 1.7, at_most=False).met and not Aim(4, "speedup", 1.3, 1.7, at_most=False).met
    assert not Aim(5, "not measured", float("nan"), 0.3).met
    assert Aim(4, "speedup", 1.3, 1.7, at_most=False).distance == pytest.approx(1.7 / 1.3)


def test_table_has_ratios_peers_and_verdicts(tmp_path):
    path = str(tmp_path / "results.md")
    text = write_report(path, synthetic_rows(), CONTEXT, plots=["results-times.png"], legend=["- legend line"])
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == text
    assert os.listdir(tmp_path) == ["results.md"]  # the temporary file was renamed, not left behind

    core = table_row(text, "core", "entry point")
    assert core[3:6] == ["7.00", "6.50", "1.08"] and core[-1] == "**yes**"
    ase = table_row(text, "ASE", "MD-like step")
    assert ase[6:9] == ["metatomic-ase", "12.0", "2.00"]  # peer / atomplug: above 1, atomplug is faster
    assert ase[-1] == "**yes**<br>**yes**"
    lammps = table_row(text, "LAMMPS", "2 ranks")
    assert lammps[-2] == "1.30x" and lammps[-1] == "**no** (unreliable: the cores were busy)"
    ipi = table_row(text, "i-PI", "NVT step")
    assert ipi[7] == "-" and ipi[-1] == "not measured"  # a peer that was not installed, an aim not measured

    assert "3 of 5 aims met" in text
    assert (
        "NOT met: LAMMPS, LJ, 2048 Ar: 2-rank speedup >= 1.70x (issue 4); measured 1.30x; "
        "unreliable in this run: the cores were busy"
    ) in text
    assert "- date: 2026-01-01 00:00 UTC" in text and "ratios within one run are what matter" in text
    assert "![results-times](results-times.png)" in text and "- legend line" in text


def test_a_failed_engine_is_reported_not_dropped():
    text = render_markdown(synthetic_rows()[:1], CONTEXT, failures=[EngineFailure("plumed", "RuntimeError: boom")])
    assert "## Benchmarks that failed" in text and "- plumed: `RuntimeError: boom`" in text


def test_cells_cannot_break_the_table():
    row = BenchRow("x|y", "s", "t", atomplug_ms=math.inf)
    cells = table_row(render_markdown([row], CONTEXT), "x/y", "t")
    assert len(cells) == 12 and cells[3] == "-"
