"""`pair_style atomplug model.pt2`: a compiled package (`atomplug compile`, AOTInductor) in LAMMPS.

The package must give what its model archive gives, through its native program: LJ argon (a half
list) in a periodic box and in a small box (8.5 A cutoff in a 10.5 A box: many periodic images),
and the message-passing example (periodic and tiny boxes; on 2 ranks every ghost is an atom of the
model), on 1 and 2 MPI ranks, equal the `.pt` runs to 1e-10 relative (energy, forces, pressure,
per-atom energies and virials) and, for LJ, LAMMPS' own lj/cut; a short NVE run follows the `.pt`
trajectory. Each `.pt2` run says in its log that the compiled package runs and how many model
calls its program answered: all of them here. Calls the program does not take (one atom, one
pair) go to TorchScript and say so; the package refusals (compiled for another torch or device,
damaged, stale) and what it was not compiled for (non_conservative on, a non-conservative output)
are core's words; NaN positions, an unknown type and a NaN energy give exactly the error of the `.pt`.
"""

from __future__ import annotations

import json
import os
import re

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from compiled_packages import BAD_PACKAGE_PROBLEMS, bad_packages, core_message
from lammps_harness import read_dump, read_values, relative_difference, run_lmp, run_python
from structures import AR_CUTOFF, AR_EPSILON, AR_LATTICE, AR_SIGMA
from test_lammps_bad_input import BATTERY_DRIVER
from test_lammps_lj import orthogonal_argon
from test_lammps_message_passing import SPECIES
from test_lammps_message_passing import run_block as message_passing_block
from test_model_file_messages import LAMMPS_PREFIX, LAMMPS_SUFFIX

TOLERANCE = 1e-10
RANKS = (1, 2)
PRESSURE = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]
DESCRIPTION = f"compiled package (AOTInductor, cpu, torch {torch.__version__})"
ANSWERED = re.compile(
    r"atomplug: the compiled package answered (\d+) of (\d+) model calls on rank 0 \((\d+) by TorchScript\)"
)


def small_argon():
    """32 atoms in a 10.52 A cube: the 8.5 A cutoff reaches several periodic images of each atom."""
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(31).uniform(-0.2, 0.2, size=atoms.positions.shape)
    atoms.wrap()
    return atoms


LJ_STRUCTURES = {"periodic": orthogonal_argon, "small": small_argon}


def lj_block(structure: str, pair: str, label: str) -> str:
    """`run 0` of a data file with one pair style, dumping everything the tests compare."""
    return f"""
clear
units metal
atom_style atomic
boundary p p p
read_data {structure}.data
{pair}
compute pe all pe/atom
compute sa all stress/atom NULL virial
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
dump d all custom 1 {label}.dump id x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values.txt screen no
"""


def nve_block(pair: str, label: str) -> str:
    """20 steps of NVE in the small box (a neighbor-list check every step), dumped at the end."""
    return f"""
clear
units metal
atom_style atomic
boundary p p p
read_data small.data
{pair}
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 600 4928459 loop geom
fix nve all nve
timestep 0.005
run 20
dump d all custom 1 {label}.dump id x y z fx fy fz
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g) ke=$(ke:%.17g)" append values.txt screen no
"""


def pair_lines(kind: str, models) -> str:
    if kind == "native":
        return f"pair_style lj/cut {AR_CUTOFF!r}\npair_coeff * * {AR_EPSILON!r} {AR_SIGMA!r}\npair_modify shift yes"
    return f"pair_style atomplug {models[kind]}\npair_coeff * * Ar"


def answered(stdout: str):
    """(answered by the program, model calls, by TorchScript) of each run in a LAMMPS output."""
    return [tuple(int(n) for n in match) for match in ANSWERED.findall(stdout)]


@pytest.fixture(scope="module")
def lj_runs(tmp_path_factory, plugin, lj_model_path, lj_package_path):
    """(directory, {nprocs: stdout of the .pt2 blocks}) for every LJ block on 1 and 2 ranks."""
    directory = tmp_path_factory.mktemp("lammps-compiled-lj")
    for name, structure in LJ_STRUCTURES.items():
        ase.io.write(str(directory / f"{name}.data"), structure(), format="lammps-data", masses=True)
    models = {"pt": lj_model_path, "pt2": lj_package_path}
    stdout = {}
    for nprocs in RANKS:
        for kind in ("pt", "pt2", "native"):
            blocks = [lj_block(name, pair_lines(kind, models), f"{name}-{kind}-{nprocs}") for name in LJ_STRUCTURES]
            if kind != "native":
                blocks.append(nve_block(pair_lines(kind, models), f"nve-{kind}-{nprocs}"))
            result = run_lmp(directory, "\n".join(blocks), nprocs, name=f"in.{kind}-{nprocs}")
            stdout[(kind, nprocs)] = result.stdout
    return str(directory), stdout


def forces_of(dump):
    return np.stack([dump[c] for c in ("fx", "fy", "fz")], axis=1)


def assert_same_frame(directory: str, label: str, reference: str) -> None:
    """The dumps and printed values of `label` equal those of `reference` to TOLERANCE (relative)."""
    values = read_values(os.path.join(directory, "values.txt"))
    ours, theirs = values[label], values[reference]
    assert abs(ours["pe"] - theirs["pe"]) <= TOLERANCE * abs(theirs["pe"]), (ours, theirs)
    pressure = [np.array([v[k] for k in PRESSURE]) for v in (ours, theirs)]
    assert relative_difference(*pressure) <= TOLERANCE
    dump, expected = (read_dump(os.path.join(directory, f"{name}.dump")) for name in (label, reference))
    assert np.array_equal(dump["id"], expected["id"])
    assert np.max(np.abs(forces_of(expected))) > 1e-3  # a real test: the forces are not zero
    assert relative_difference(forces_of(dump), forces_of(expected)) <= TOLERANCE
    assert relative_difference(dump["c_pe"], expected["c_pe"]) <= TOLERANCE
    virial, expected_virial = (np.stack([d[f"c_sa[{k}]"] for k in range(1, 7)], axis=1) for d in (dump, expected))
    assert relative_difference(virial, expected_virial) <= TOLERANCE


@pytest.mark.parametrize("structure", list(LJ_STRUCTURES))
@pytest.mark.parametrize("nprocs", RANKS)
def test_lj_package_equals_the_archive_and_lj_cut(lj_runs, structure, nprocs):
    directory, _ = lj_runs
    assert_same_frame(directory, f"{structure}-pt2-{nprocs}", f"{structure}-pt-{nprocs}")
    assert_same_frame(directory, f"{structure}-pt2-{nprocs}", f"{structure}-native-{nprocs}")


@pytest.mark.parametrize("nprocs", RANKS)
def test_lj_package_follows_the_archive_in_nve(lj_runs, nprocs):
    directory, _ = lj_runs
    values = read_values(os.path.join(directory, "values.txt"))
    ours, theirs = values[f"nve-pt2-{nprocs}"], values[f"nve-pt-{nprocs}"]
    for key in ("pe", "ke"):
        assert abs(ours[key] - theirs[key]) <= TOLERANCE * abs(theirs[key])
    dump, expected = (read_dump(os.path.join(directory, f"nve-{kind}-{nprocs}.dump")) for kind in ("pt2", "pt"))
    positions = [np.stack([d[c] for c in ("x", "y", "z")], axis=1) for d in (dump, expected)]
    assert np.max(np.abs(positions[0] - positions[1])) <= 1e-9
    assert relative_difference(forces_of(dump), forces_of(expected)) <= TOLERANCE


@pytest.mark.parametrize("nprocs", RANKS)
def test_the_log_says_the_program_answered_every_call(lj_runs, nprocs):
    _, stdout = lj_runs
    package = stdout[("pt2", nprocs)]
    assert package.count(DESCRIPTION) == len(LJ_STRUCTURES) + 1, package[-3000:]
    counts = answered(package)
    # every run (run 0 of each structure; the NVE run of 20 steps and its run 0)
    assert [calls for _, calls, _ in counts] == [1, 1, 21, 1], counts
    assert all(program == calls and scripted == 0 for program, calls, scripted in counts), counts
    archive = stdout[("pt", nprocs)]
    assert "compiled package" not in archive and not answered(archive)


# ---- the message-passing example ------------------------------------------------------------------

MP_CONFIGS = {"periodic": "hco_liquid", "tiny": "hco_tiny_box"}


@pytest.fixture(scope="module")
def message_passing_runs(tmp_path_factory, plugin, message_passing_path, message_passing_package_path):
    import structures

    directory = tmp_path_factory.mktemp("lammps-compiled-mp")
    for name, builder in MP_CONFIGS.items():
        atoms = getattr(structures, builder)()
        ase.io.write(str(directory / f"{name}.data"), atoms, format="lammps-data", specorder=SPECIES, masses=True)
    models = {"pt": message_passing_path, "pt2": message_passing_package_path}
    stdout = {}
    for nprocs in RANKS:
        for kind, model in models.items():
            text = "\n".join(
                message_passing_block(name, "p p p", "", model, f"mp-{name}-{kind}-{nprocs}") for name in MP_CONFIGS
            )
            stdout[(kind, nprocs)] = run_lmp(directory, text, nprocs, name=f"in.mp-{kind}-{nprocs}").stdout
    return str(directory), stdout


@pytest.mark.parametrize("name", list(MP_CONFIGS))
@pytest.mark.parametrize("nprocs", RANKS)
def test_message_passing_package_equals_the_archive(message_passing_runs, name, nprocs):
    directory, stdout = message_passing_runs
    assert_same_frame(directory, f"mp-{name}-pt2-{nprocs}", f"mp-{name}-pt-{nprocs}")
    counts = answered(stdout[("pt2", nprocs)])
    assert len(counts) == len(MP_CONFIGS) and all(p == c == 1 and s == 0 for p, c, s in counts), counts


# ---- calls the program does not take, refusals, bad input -------------------------------------------

FEW = """
units metal
boundary p p p
region box block 0 30 0 30 0 30
create_box 1 box
mass * 39.948
{atoms}
pair_style atomplug {model}
pair_coeff * * Ar
run 0
print "{label} pe=$(pe:%.17g) fmax=$(fmax:%.17g)" append values.txt screen no
"""


@pytest.mark.parametrize(
    "case, atoms",
    [
        ("one-atom", "create_atoms 1 single 3 4 5 units box"),
        ("one-pair", "create_atoms 1 single 3 4 5 units box\ncreate_atoms 1 single 6.5 4 5 units box"),
    ],
)
def test_calls_the_program_does_not_take_run_as_torchscript(
    tmp_path, plugin, lj_model_path, lj_package_path, case, atoms
):
    """One atom (the program takes 2 or more) and one pair (it takes 2 or more per list): TorchScript
    answers, with the archive's numbers."""
    for kind, model in (("pt", lj_model_path), ("pt2", lj_package_path)):
        result = run_lmp(tmp_path, FEW.format(atoms=atoms, model=model, label=kind), name=f"in.{kind}")
        if kind == "pt2":
            assert answered(result.stdout) == [(0, 1, 1)], result.stdout[-2000:]
    values = read_values(str(tmp_path / "values.txt"))
    assert values["pt2"] == values["pt"]


def lammps_message(text) -> str:
    assert text is not None and text.startswith(LAMMPS_PREFIX), text
    return LAMMPS_SUFFIX.sub("", text[len(LAMMPS_PREFIX) :].strip())


@pytest.fixture(scope="module")
def refused(tmp_path_factory, plugin, lj_model_path, lj_package_path):
    """{kind: (core's message, LAMMPS' message)} for each bad copy of the LJ package."""
    from atomplug.examples.lj import export_lj

    directory = tmp_path_factory.mktemp("lammps-compiled-refused")
    other = str(directory / "other.pt")
    export_lj(other, epsilon=2 * AR_EPSILON, sigma=AR_SIGMA, cutoff=AR_CUTOFF, types=[18])
    paths = bad_packages(lj_package_path, lj_model_path, other, directory)
    box = "units metal\nlattice fcc 5.26\nregion box block 0 2 0 2 0 2\ncreate_box 1 box\ncreate_atoms 1 box\nmass * 39.948\n"
    cases = {kind: box + f"pair_style atomplug {path}\npair_coeff * * Ar\n" for kind, path in paths.items()}
    (directory / "cases.json").write_text(json.dumps(cases))
    run_python(directory, BATTERY_DRIVER)
    results = json.loads((directory / "results.json").read_text())
    return {kind: (core_message(path), lammps_message(results[kind])) for kind, path in paths.items()}


@pytest.mark.parametrize("kind", list(BAD_PACKAGE_PROBLEMS))
def test_a_refused_package_gets_core_words(refused, kind):
    core, lammps = refused[kind]
    assert BAD_PACKAGE_PROBLEMS[kind] in core and "compile it again: `atomplug compile lj.pt`" in core, core
    assert lammps == core


# what the LJ package was not compiled for: forces from its non-conservative outputs, and those outputs
NOT_COMPILED_FOR = {
    "non-conservative-forces": ("non_conservative on", ["energy"], True),
    "non-conservative-output": ("outputs non_conservative_stress", ["energy", "non_conservative_stress"], False),
}


@pytest.fixture(scope="module")
def not_compiled_for(tmp_path_factory, plugin, lj_package_path):
    """{case: (core's refusal of the call, LAMMPS' error)}."""
    from atomplug.core import load_model

    compiled = load_model(lj_package_path).compiled
    directory = tmp_path_factory.mktemp("lammps-compiled-not-compiled-for")
    box = "units metal\nlattice fcc 5.26\nregion box block 0 2 0 2 0 2\ncreate_box 1 box\ncreate_atoms 1 box\nmass * 39.948\n"
    cases, expected = {}, {}
    for case, (keyword, outputs, non_conservative) in NOT_COMPILED_FOR.items():
        cases[case] = box + f"pair_style atomplug {lj_package_path} {keyword}\npair_coeff * * Ar\nrun 0\n"
        arguments = [None] * 16
        arguments[7], arguments[9], arguments[15] = outputs, "energy", non_conservative
        arguments[10], arguments[11], arguments[12] = True, True, False
        expected[case] = compiled.refusal(arguments)
    (directory / "cases.json").write_text(json.dumps(cases))
    run_python(directory, BATTERY_DRIVER)
    results = json.loads((directory / "results.json").read_text())
    return {case: (expected[case], results[case]) for case in cases}


@pytest.mark.parametrize("case", list(NOT_COMPILED_FOR))
def test_what_the_package_was_not_compiled_for_is_refused_in_core_words(not_compiled_for, case):
    core, lammps = not_compiled_for[case]
    assert core is not None and "run the model archive ('lj.pt' was compiled from it) for that" in core
    assert lammps is not None, "LAMMPS ran what the package was not compiled for"
    prefix = "ERROR on proc 0: pair_style atomplug on rank 0 at step 0: "
    assert lammps.startswith(prefix), lammps
    assert LAMMPS_SUFFIX.sub("", lammps[len(prefix) :].strip()) == core


BAD_INPUT_DRIVER = """
import json
from lammps import lammps

with open("bad-cases.json") as handle:
    cases = json.load(handle)
results = {}
for case, (commands, change) in cases.items():
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(commands)
        # between neighbor-list builds LAMMPS checks no coordinate, and the pair style reads the
        # types every step: a NaN position or an unmapped type reaches the model as it is
        if change == "nan-position":
            lmp.numpy.extract_atom("x")[0, 0] = float("nan")
        elif change == "unknown-type":
            lmp.numpy.extract_atom("type")[0] = 2
        lmp.command("run 1 pre no")
        results[case] = None
    except Exception as error:
        results[case] = str(error)
    lmp.close()
with open("bad-results.json", "w") as handle:
    json.dump(results, handle)
"""

BAD_INPUT_SETUP = """
units metal
lattice fcc 5.26
region box block 0 2 0 2 0 2
create_box 2 box
create_atoms 1 box
mass * 39.948
pair_style hybrid/overlay atomplug {model} lj/cut 8.5
pair_coeff * * atomplug Ar NULL
pair_coeff 1 2 lj/cut 0.01 3.4
pair_coeff 2 2 lj/cut 0.01 3.4
{more}
run 0
"""
# two atoms on top of each other: the LJ energy is NaN (the program's `finite` flag)
OVERLAP = "create_atoms 1 single 0.1 0.1 0.1 units box\ncreate_atoms 1 single 0.1 0.1 0.1 units box"


@pytest.fixture(scope="module")
def bad_input_errors(tmp_path_factory, plugin, lj_model_path, lj_package_path):
    directory = tmp_path_factory.mktemp("lammps-compiled-bad-input")
    cases = {}
    for kind, model in (("pt", lj_model_path), ("pt2", lj_package_path)):
        for change in ("nan-position", "unknown-type"):
            cases[f"{change}-{kind}"] = (BAD_INPUT_SETUP.format(model=model, more=""), change)
        cases[f"overlap-{kind}"] = (BAD_INPUT_SETUP.format(model=model, more=OVERLAP), "none")
    (directory / "bad-cases.json").write_text(json.dumps(cases))
    run_python(directory, BAD_INPUT_DRIVER)
    return json.loads((directory / "bad-results.json").read_text())


@pytest.mark.parametrize(
    "change, expected",
    [
        ("nan-position", "positions of 1 atom(s) are NaN or infinite (first: atom 0)"),
        ("unknown-type", "atom types [0] are unknown to this model, which knows [18]"),
        ("overlap", "the model returned NaN or infinite values"),
    ],
)
def test_bad_input_gives_the_torchscript_error(bad_input_errors, change, expected):
    archive, package = bad_input_errors[f"{change}-pt"], bad_input_errors[f"{change}-pt2"]
    assert archive is not None and expected in archive, archive
    assert package == archive
