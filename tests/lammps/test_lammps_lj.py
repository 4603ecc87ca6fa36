"""`pair_style atomplug` with the LJ model against LAMMPS' own `lj/cut` (pair_modify shift yes).

One LAMMPS input holds every configuration (units, box shape, boundaries, half/full list model,
hybrid/overlay with NULL types) separated by `clear`; it runs once on 1, 2 and 4 MPI ranks. Each
configuration evaluates the same randomly displaced argon with both pair styles and dumps energy,
per-atom forces, per-atom energies and per-atom virials (compute pe/atom, stress/atom) and the
virial pressure tensor. All must agree to 1e-10 relative.
"""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from lammps_harness import read_dump, read_values, relative_difference, run_lmp
from structures import AR_CUTOFF, AR_EPSILON, AR_LATTICE, AR_SIGMA, displaced_triclinic_argon

from atomplug.core import conversion_factor

TOLERANCE = 1e-10
RANKS = [1, 2, 4]
PRESSURE = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]


def orthogonal_argon():
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((4, 3, 3))
    atoms.positions += np.random.default_rng(11).uniform(-0.15, 0.15, size=atoms.positions.shape)
    atoms.wrap()
    return atoms


def slab_argon():
    """p p f: periodic in x and y, 20 A of vacuum along z."""
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((3, 3, 2))
    atoms.positions += np.random.default_rng(12).uniform(-0.15, 0.15, size=atoms.positions.shape)
    atoms.wrap()
    atoms.positions[:, 2] += 10.0
    atoms.cell[2, 2] += 20.0
    return atoms


def cluster_argon():
    """f f f: an isolated cluster in a large box."""
    atoms = bulk("Ar", "fcc", a=AR_LATTICE, cubic=True).repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(13).uniform(-0.15, 0.15, size=atoms.positions.shape)
    atoms.positions += 9.0
    atoms.set_cell(np.eye(3) * (2 * AR_LATTICE + 18.0))
    return atoms


# name: (units, structure, boundary, model, hybrid, ranks). Oversubscribed 4-rank runs are slow on
# small machines: they run the required matrix (units x box shape) and the empty-subdomain cluster.
CONFIGS = {
    "metal-orthogonal": ("metal", "orthogonal", "p p p", "half", False, (1, 2, 4)),
    "metal-triclinic": ("metal", "triclinic", "p p p", "half", False, (1, 2, 4)),
    "real-orthogonal": ("real", "orthogonal", "p p p", "half", False, (1, 2, 4)),
    "real-triclinic": ("real", "triclinic", "p p p", "half", False, (1, 2, 4)),
    "metal-triclinic-full-list": ("metal", "triclinic", "p p p", "full", False, (1, 2)),
    "metal-slab-ppf": ("metal", "slab", "p p f", "half", False, (1, 2)),
    "metal-cluster-fff": ("metal", "cluster", "f f f", "half", False, (1, 2, 4)),
    "metal-hybrid-null": ("metal", "orthogonal", "p p p", "half", True, (1, 2)),
}
CASES = [(config, nprocs) for config, spec in CONFIGS.items() for nprocs in spec[-1]]


def write_structures(directory: str) -> None:
    structures = {
        "orthogonal": orthogonal_argon(),
        "triclinic": displaced_triclinic_argon(),
        "slab": slab_argon(),
        "cluster": cluster_argon(),
    }
    for name, atoms in structures.items():
        ase.io.write(os.path.join(directory, f"{name}.data"), atoms, format="lammps-data", masses=True)


def pair_lines(style: str, units: str, model: str, hybrid: bool, lj_path: str, full_path: str) -> str:
    epsilon = AR_EPSILON * conversion_factor("eV", "kcal/mol") if units == "real" else AR_EPSILON
    native = f"{epsilon!r} {AR_SIGMA!r}"
    path = full_path if model == "full" else lj_path
    if style == "native":
        return f"pair_style lj/cut {AR_CUTOFF!r}\npair_coeff * * {native}\npair_modify shift yes\n"
    if hybrid:
        return (
            f"pair_style hybrid/overlay atomplug {path} lj/cut {AR_CUTOFF!r}\n"
            "pair_coeff * * atomplug Ar NULL\n"
            f"pair_coeff 1 2 lj/cut {native}\npair_coeff 2 2 lj/cut {native}\npair_modify shift yes\n"
        )
    return f"pair_style atomplug {path}\npair_coeff * * Ar\n"


# hybrid/overlay: every other atom becomes LAMMPS type 2 (still argon), which atomplug skips (NULL)
# and lj/cut handles, together with the 1-2 pairs
RETYPE = """ extra/atom/types 1
mass 2 39.948
group even id 2:100000:2
set group even type 2"""


def lammps_input(nprocs: int, lj_path: str, full_path: str) -> str:
    retype = RETYPE
    blocks = []
    for name, (units, structure, boundary, model, hybrid, ranks) in CONFIGS.items():
        if nprocs not in ranks:
            continue
        # the cluster is split along z only, so that with 4 ranks two subdomains hold no atom
        processors = "processors 1 1 *" if structure == "cluster" else ""
        for style in ("atomplug", "native"):
            label = f"{name}-{style}"
            blocks.append(
                f"""
clear
units {units}
atom_style atomic
boundary {boundary}
{processors}
read_data {structure}.data{retype if hybrid else ""}
{pair_lines(style, units, model, hybrid, lj_path, full_path)}
compute pe all pe/atom
compute sa all stress/atom NULL virial
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
dump d all custom 1 {label}-{nprocs}.dump id x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values-{nprocs}.txt screen no
"""
            )
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def lj_runs(tmp_path_factory, plugin, lj_model_path, full_list_lj_path):
    """{nprocs: directory} with every configuration run on 1, 2 and 4 ranks."""
    directory = tmp_path_factory.mktemp("lammps-lj")
    write_structures(str(directory))
    runs = {}
    for nprocs in RANKS:
        result = run_lmp(
            directory, lammps_input(nprocs, lj_model_path, full_list_lj_path), nprocs, name=f"in.lj-{nprocs}"
        )
        assert "atomplug: model 'lennard-jones'" in result.stdout
        runs[nprocs] = str(directory)
    return runs


@pytest.mark.parametrize("config, nprocs", CASES)
def test_lj_matches_lj_cut(lj_runs, config, nprocs):
    directory = lj_runs[nprocs]
    values = read_values(os.path.join(directory, f"values-{nprocs}.txt"))
    ours, native = values[f"{config}-atomplug"], values[f"{config}-native"]
    assert abs(ours["pe"] - native["pe"]) <= TOLERANCE * abs(native["pe"])
    pressure_ours = np.array([ours[k] for k in PRESSURE])
    pressure_native = np.array([native[k] for k in PRESSURE])
    assert relative_difference(pressure_ours, pressure_native) <= TOLERANCE

    dump_ours = read_dump(os.path.join(directory, f"{config}-atomplug-{nprocs}.dump"))
    dump_native = read_dump(os.path.join(directory, f"{config}-native-{nprocs}.dump"))
    assert np.array_equal(dump_ours["id"], dump_native["id"])
    assert np.max(np.abs(dump_native["fx"])) > 1e-3  # a real test: the forces are not zero
    forces_ours = np.stack([dump_ours[c] for c in ("fx", "fy", "fz")], axis=1)
    forces_native = np.stack([dump_native[c] for c in ("fx", "fy", "fz")], axis=1)
    assert relative_difference(forces_ours, forces_native) <= TOLERANCE
    assert relative_difference(dump_ours["c_pe"], dump_native["c_pe"]) <= TOLERANCE
    virial_ours = np.stack([dump_ours[f"c_sa[{k}]"] for k in range(1, 7)], axis=1)
    virial_native = np.stack([dump_native[f"c_sa[{k}]"] for k in range(1, 7)], axis=1)
    assert relative_difference(virial_ours, virial_native) <= TOLERANCE
    # per-atom values add up to the global ones
    assert abs(dump_ours["c_pe"].sum() - ours["pe"]) <= 1e-9 * abs(ours["pe"])


def test_results_do_not_depend_on_ranks(lj_runs):
    """Same configuration on 1, 2 and 4 ranks: same numbers (to rounding)."""
    reference = read_values(os.path.join(lj_runs[1], "values-1.txt"))
    for nprocs in RANKS[1:]:
        values = read_values(os.path.join(lj_runs[nprocs], f"values-{nprocs}.txt"))
        for config, spec in CONFIGS.items():
            if nprocs not in spec[-1]:
                continue
            label = f"{config}-atomplug"
            assert abs(values[label]["pe"] - reference[label]["pe"]) <= 1e-12 * abs(reference[label]["pe"])
            one = read_dump(os.path.join(lj_runs[1], f"{label}-1.dump"))
            many = read_dump(os.path.join(lj_runs[nprocs], f"{label}-{nprocs}.dump"))
            forces_one = np.stack([one[c] for c in ("fx", "fy", "fz")], axis=1)
            forces_many = np.stack([many[c] for c in ("fx", "fy", "fz")], axis=1)
            assert relative_difference(forces_many, forces_one) <= 1e-12
