"""ATOMPLUG under `plumed driver`, against PLUMED's own COORDINATION and DISTANCE.

Each comparison runs the same trajectory twice: once with a RESTRAINT on the native CV and once on
ATOMPLUG, both printing both values; `--dump-forces --dump-full-virial` gives the forces and the
virial PLUMED applies, which must agree to 1e-8 relative (they agree to ~1e-13).
"""

import os

import numpy as np
import pytest
from plumed_testing import (
    FMT,
    assert_close,
    check_run,
    core_has_multi_property_gradients,
    random_frames,
    read_colvar,
    read_forces,
    run_driver,
    write_xyz,
)

TRICLINIC_BOX = np.array([[2.5, 0.0, 0.0], [0.2, 2.4, 0.0], [-0.1, 0.15, 2.6]])  # nm, rows are cell vectors

SWITCHES = {
    # model fixture name -> PLUMED switching function it reproduces
    "coordination": "{RATIONAL R_0=0.3 D_MAX=0.8 NOSTRETCH}",
    "coordination_general": "{RATIONAL R_0=0.25 D_0=0.05 NN=8 MM=14 D_MAX=0.9 NOSTRETCH}",
}


def restrained_runs(directory, plugin, trajectory, native, atomplug, native_label="ref", cv_label="cv", extra_lines=""):
    """Two driver runs, RESTRAINT on the native CV then on ATOMPLUG; returns colvar and forces of both."""
    results = {}
    for biased in (native_label, cv_label):
        text = (
            f"LOAD FILE={plugin}\n{extra_lines}{native}\n{atomplug}\n"
            f"RESTRAINT ARG={biased} AT=1.5 KAPPA=20.0\n"
            f"PRINT ARG={native_label},{cv_label} FILE=COLVAR-{biased} FMT={FMT}\n"
        )
        forces_file = f"forces-{biased}.xyz"
        result = run_driver(
            directory, text, trajectory, "--dump-forces", forces_file, "--dump-forces-fmt", FMT, "--dump-full-virial"
        )
        check_run(result)
        virial, forces = read_forces(os.path.join(directory, forces_file))
        results[biased] = (read_colvar(os.path.join(directory, f"COLVAR-{biased}")), forces, virial, result.stdout)
    return results


@pytest.mark.parametrize(
    "geometry, model",
    [
        ("periodic", "coordination"),
        ("periodic", "coordination_general"),
        ("vacuum", "coordination"),
        ("vacuum", "coordination_general"),
    ],
)
def test_coordination_matches_native(tmp_path, plugin, plumed_models, geometry, model):
    frames = random_frames(30, 4, 2.4, seed=11)
    box = TRICLINIC_BOX if geometry == "periodic" else None
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, frames, box)
    if geometry == "periodic":
        group_a, group_b = "1-10", "11-30"
        species = "SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1"
    else:
        # interleaved groups, species listed B first: the atom -> type mapping is by atom number
        group_a = ",".join(str(i) for i in range(1, 21, 2))
        group_b = ",".join(str(i) for i in list(range(2, 21, 2)) + list(range(21, 31)))
        species = f"SPECIES1={group_b} SPECIES2={group_a} SPECIES_TO_TYPES=1,8"
    native = f"ref: COORDINATION GROUPA={group_a} GROUPB={group_b} SWITCH={SWITCHES[model]}"
    atomplug = f"cv: ATOMPLUG MODEL={plumed_models[model]} {species}"
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug)

    colvar = runs["cv"][0]
    assert np.all(colvar["ref"] > 0.5), "the test structures must have contacts"
    assert_close(colvar["cv"], colvar["ref"], what="values")
    assert_close(runs["cv"][1], runs["ref"][1], what="forces")
    assert_close(runs["cv"][2], runs["ref"][2], what="virial")
    assert np.max(np.abs(runs["ref"][1])) > 1.0, "the restraint must exert forces"
    if geometry == "periodic":
        assert "neighbor list: cutoff 0.8" in runs["cv"][3] or "neighbor list: cutoff 0.9" in runs["cv"][3]


def test_selected_atoms_sum_their_coordination(tmp_path, plugin, plumed_models):
    """The coordination model's per-atom values summed over SELECTED_ATOMS = COORDINATION of that subset."""
    frames = random_frames(30, 3, 2.4, seed=5)
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, frames, TRICLINIC_BOX)
    native = f"ref: COORDINATION GROUPA=2-5 GROUPB=11-30 SWITCH={SWITCHES['coordination']}"
    atomplug = (
        f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 "
        "SPECIES_TO_TYPES=8,1 SELECTED_ATOMS=2-5"
    )
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug)
    assert_close(runs["cv"][0]["cv"], runs["cv"][0]["ref"], what="values")
    assert_close(runs["cv"][1], runs["ref"][1], what="forces")
    assert_close(runs["cv"][2], runs["ref"][2], what="virial")


def distance_frames(n_frames, seed):
    """12 atoms in the triclinic box; atoms 2 and 9 at 0.3-0.8 nm, atom 9 wrapped into the cell, so
    that the distance goes through a periodic image in most frames."""
    rng = np.random.default_rng(seed)
    inverse = np.linalg.inv(TRICLINIC_BOX)
    frames = []
    for _ in range(n_frames):
        positions = rng.uniform(0.0, 2.4, (12, 3))
        direction = rng.normal(size=3)
        positions[8] = positions[1] + direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.8)
        fractional = positions[8] @ inverse
        positions[8] = (fractional - np.floor(fractional)) @ TRICLINIC_BOX
        frames.append(positions)
    return frames


@pytest.mark.parametrize("units", ["", "UNITS LENGTH=A ENERGY=kcal/mol\n"])
def test_distance_matches_native_with_virial(tmp_path, plugin, plumed_models, units):
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, distance_frames(5, seed=3), TRICLINIC_BOX)
    native = "ref: DISTANCE ATOMS=2,9"
    atomplug = f"cv: ATOMPLUG MODEL={plumed_models['distance']} OUTPUT=test::distance SPECIES1=2 SPECIES2=9 SPECIES_TO_TYPES=6,8"
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug, extra_lines=units)
    colvar = runs["cv"][0]
    expected_range = (3.0, 8.0) if units else (0.3, 0.8)
    assert np.all((colvar["ref"] > expected_range[0] - 1e-9) & (colvar["ref"] < expected_range[1] + 1e-9))
    assert_close(colvar["cv"], colvar["ref"], what="values")
    assert_close(runs["cv"][1], runs["ref"][1], what="forces")
    assert_close(runs["cv"][2], runs["ref"][2], what="virial")
    assert np.max(np.abs(runs["ref"][2])) > 1.0, "the virial must be non-trivial"
    if units:
        assert "length 0.10000000000000001*nm, energy 4.1840000000000002*kJ/mol" in runs["cv"][3]


@pytest.mark.parametrize("model, names", [("two_named", ["c3", "c4"]), ("two_unnamed", ["0", "1"])])
def test_multi_property_output_gives_one_component_per_property(tmp_path, plugin, plumed_models, model, names):
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, random_frames(30, 3, 2.4, seed=8), TRICLINIC_BOX)
    text = (
        f"LOAD FILE={plugin}\n"
        "ref3: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={RATIONAL R_0=0.3 D_MAX=0.8 NOSTRETCH}\n"
        "ref4: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={RATIONAL R_0=0.4 D_MAX=0.8 NOSTRETCH}\n"
        f"cv: ATOMPLUG MODEL={plumed_models[model]} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1\n"
        f"PRINT ARG=ref3,ref4,cv.* FILE=COLVAR FMT={FMT}\n"
    )
    check_run(run_driver(str(tmp_path), text, trajectory))
    colvar = read_colvar(str(tmp_path / "COLVAR"))
    assert [key for key in colvar if key.startswith("cv.")] == [f"cv.{name}" for name in names]
    assert_close(colvar[f"cv.{names[0]}"], colvar["ref3"], what="first property")
    assert_close(colvar[f"cv.{names[1]}"], colvar["ref4"], what="second property")


def test_multi_property_components_have_their_own_derivatives(tmp_path, plugin, plumed_models):
    """A RESTRAINT on one component pushes with that component's derivatives. This needs a core whose
    entry point differentiates each property; with an older core ATOMPLUG must stop with a clear error."""
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, random_frames(30, 3, 2.4, seed=9), TRICLINIC_BOX)
    native = "ref4: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={RATIONAL R_0=0.4 D_MAX=0.8 NOSTRETCH}"
    atomplug = f"cv: ATOMPLUG MODEL={plumed_models['two_named']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1"
    if not core_has_multi_property_gradients(plumed_models["two_named"]):
        text = f"LOAD FILE={plugin}\n{atomplug}\nRESTRAINT ARG=cv.c4 AT=1.0 KAPPA=1.0\n"
        result = run_driver(str(tmp_path), text, trajectory, "--dump-forces", "forces.xyz")
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "single-valued" in output and "needs a newer atomplug" in output
        assert "Segmentation" not in output
        return
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug, native_label="ref4", cv_label="cv.c4")
    assert_close(runs["cv.c4"][0]["cv.c4"], runs["cv.c4"][0]["ref4"], what="values")
    assert_close(runs["cv.c4"][1], runs["ref4"][1], what="forces")
    assert_close(runs["cv.c4"][2], runs["ref4"][2], what="virial")


@pytest.mark.parametrize("skin", ["", " SKIN=0.2", " SKIN=0"])
def test_verlet_skin_lists_follow_an_md_trajectory(tmp_path, plugin, plumed_models, skin):
    """Small steps (as in MD) reuse vesin's Verlet lists, cut to the model's cutoff at every step;
    a box change starts them afresh. Values and forces stay those of native COORDINATION."""
    rng = np.random.default_rng(17)
    positions = random_frames(30, 1, 2.4, seed=17)[0]
    frames = []
    for _ in range(12):
        positions = positions + rng.normal(0.0, 0.01, positions.shape)
        frames.append(positions)
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, frames[:6], TRICLINIC_BOX)
    with open(trajectory, "a") as handle:  # then a larger box (NPT-like), same atoms
        write_xyz(str(tmp_path / "second.xyz"), frames[6:], TRICLINIC_BOX * 1.03)
        handle.write(open(str(tmp_path / "second.xyz")).read())
    native = f"ref: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={SWITCHES['coordination']}"
    atomplug = (
        f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1{skin}"
    )
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug)
    assert len(runs["cv"][0]["cv"]) == 12
    assert_close(runs["cv"][0]["cv"], runs["cv"][0]["ref"], what="values")
    assert_close(runs["cv"][1], runs["ref"][1], what="forces")
    assert_close(runs["cv"][2], runs["ref"][2], what="virial")


def test_coordination_stays_native_across_the_switch_to_optimised_execution(tmp_path, plugin, plumed_models):
    """The model's forward runs unoptimised for its first UNOPTIMIZED_CALLS calls, then optimised on a
    fresh copy of the module (atomplug_core::Model): a trajectory well past that switch (one call
    per frame) keeps the values, forces and virial of native COORDINATION. Without the fresh copy
    the optimised entry point fails right after the switch."""
    from atomplug.core.archive import UNOPTIMIZED_CALLS

    n_frames = UNOPTIMIZED_CALLS + 10
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, random_frames(30, n_frames, 2.4, seed=23), TRICLINIC_BOX)
    native = f"ref: COORDINATION GROUPA=1-10 GROUPB=11-30 SWITCH={SWITCHES['coordination']}"
    atomplug = f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1"
    runs = restrained_runs(str(tmp_path), plugin, trajectory, native, atomplug)
    colvar = runs["cv"][0]
    assert len(colvar["cv"]) == n_frames
    assert np.all(colvar["ref"] > 0.5), "the test structures must have contacts"
    assert_close(colvar["cv"], colvar["ref"], what="values")
    assert_close(runs["ref"][0]["cv"], runs["ref"][0]["ref"], what="values, unbiased")
    assert_close(runs["cv"][1], runs["ref"][1], what="forces")
    assert_close(runs["cv"][2], runs["ref"][2], what="virial")
    assert np.max(np.abs(runs["ref"][1])) > 1.0, "the restraint must exert forces"
