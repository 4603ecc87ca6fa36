"""ATOMPLUG with models that read inputs (charges, total charge, spin, masses) and with output
variants, under `plumed driver`, against native physics: the brute-force Coulomb sum of
`examples/coulomb.py`, PLUMED's own COM and DISTANCE, and core's ModelRunner for the charge/spin toy.

PLUMED's own units are changed (UNITS) in some runs, so that the units of mass and charge the action
gives the archive are checked: a wrong one changes the values, not only their unit.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from plumed_testing import FMT, assert_close, check_run, read_colvar, read_forces, run_driver, write_xyz
from torch import Tensor

from atomplug.core import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    System,
    export,
)
from atomplug.core.units import conversion_factor
from atomplug.examples.coulomb import LAMMPS_METAL_COULOMB_CONSTANT, coulomb_reference, export_coulomb
from atomplug.examples.inputs import export_charge_spin
from atomplug.plumed_cv.single_point import evaluate_with_plumed

COULOMB_CUTOFF = 6.0
NM = conversion_factor("Angstrom", "nm")
KJ_PER_MOL = conversion_factor("eV", "kJ/mol")
RTOL = 1e-10


# ---- test models --------------------------------------------------------------------------------


class CenterOfMassDistance(torch.nn.Module):
    """features: |COM(type `first`) - COM(type `second`)| (non-periodic), from the `masses` input;
    test::mass_sum: the sum of the masses in amu as a bare number (checks the input's conversion);
    test::total_mass: the same sum as a mass (checks the conversion of an output of quantity mass)."""

    def __init__(self, first: int, second: int):
        super().__init__()
        self.first = int(first)
        self.second = int(second)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return []

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        return {"masses": ModelOutput(quantity="mass", unit="amu", per_atom=True)}

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        distances: List[Tensor] = []
        sums: List[Tensor] = []
        for system in systems:
            masses = system.get_input("masses").reshape(-1, 1)
            centers: List[Tensor] = []
            for atomic_type in (self.first, self.second):
                mask = (system.types == atomic_type).to(masses.dtype).reshape(-1, 1)
                weights = masses * mask
                centers.append((weights * system.positions).sum(dim=0) / weights.sum())
            distances.append(torch.linalg.vector_norm(centers[0] - centers[1]).reshape(1))
            sums.append(masses.sum().reshape(1))
        results: Dict[str, Tensor] = {}
        if "features" in outputs:
            results["features"] = torch.cat(distances).reshape(-1, 1)
        for name in ("test::mass_sum", "test::total_mass"):
            if name in outputs:
                results[name] = torch.cat(sums).reshape(-1, 1)
        return results


def export_center_of_mass(path: str) -> None:
    capabilities = ModelCapabilities(
        outputs={
            "features": ModelOutput(quantity="length", unit="Angstrom", per_atom=False),
            "test::mass_sum": ModelOutput(quantity="", unit="", per_atom=False),
            "test::total_mass": ModelOutput(quantity="mass", unit="amu", per_atom=False),
        },
        atomic_types=[6, 8],
        interaction_range=0.0,
        length_unit="Angstrom",
    )
    export(CenterOfMassDistance(6, 8), path, capabilities, ModelMetadata(name="center-of-mass distance"))


# the variants of the distance model: output -> factor on the distance between the two atoms (Angstrom)
VARIANT_FACTORS = {"features": 1.0, "features/double": 2.0, "energy": 1.0, "energy/ccsdt": 3.0, "energy/pbe": 4.0}


class DistanceVariants(torch.nn.Module):
    """Each output is a factor (VARIANT_FACTORS) times the distance between the atom of type 6 and
    the atom of type 8: features in Angstrom, energy in eV per Angstrom of distance."""

    def __init__(self):
        super().__init__()
        self.cutoff = 9.0

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        factors = {"features": 1.0, "features/double": 2.0, "energy": 1.0, "energy/ccsdt": 3.0, "energy/pbe": 4.0}
        options = NeighborListOptions(self.cutoff, False, True)
        distances: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            types_i = system.types.index_select(0, neighbors.pairs[:, 0])
            types_j = system.types.index_select(0, neighbors.pairs[:, 1])
            mask = ((types_i == 6) & (types_j == 8)) | ((types_i == 8) & (types_j == 6))
            distance = torch.linalg.vector_norm(neighbors.vectors, dim=1) * mask.to(system.positions.dtype)
            distances.append(distance.sum().reshape(1))
        values = torch.cat(distances).reshape(-1, 1)
        return {name: factors[name] * values for name in outputs}


def export_distance_variants(path: str, names=("features", "features/double", "energy", "energy/ccsdt")) -> None:
    """The distance model with the outputs `names` (among VARIANT_FACTORS)."""
    outputs = {}
    for name in names:
        if name.startswith("energy"):
            outputs[name] = ModelOutput(quantity="energy", unit="eV", per_atom=False)
        else:
            outputs[name] = ModelOutput(quantity="length", unit="Angstrom", per_atom=False)
    capabilities = ModelCapabilities(
        outputs=outputs, atomic_types=[1, 6, 8], interaction_range=9.0, length_unit="Angstrom"
    )
    export(DistanceVariants(), path, capabilities, ModelMetadata(name="distance variants"))


@pytest.fixture(scope="module")
def input_models(tmp_path_factory) -> Dict[str, str]:
    directory = tmp_path_factory.mktemp("plumed-input-models")
    paths = {name: str(directory / f"{name}.pt") for name in ("coulomb", "charge_spin", "center_of_mass", "variants")}
    export_coulomb(paths["coulomb"], cutoff=COULOMB_CUTOFF)
    export_charge_spin(paths["charge_spin"])
    export_center_of_mass(paths["center_of_mass"])
    export_distance_variants(paths["variants"])
    return paths


# ---- structures -----------------------------------------------------------------------------------


def salt() -> Atoms:
    """Rattled rock salt, 64 atoms, a cell (11.28 Angstrom) shorter than two cutoffs, with per-atom
    charges that differ from atom to atom (so that a wrong atom order shows)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    atoms.rattle(stdev=0.05, seed=4)
    rng = np.random.default_rng(5)
    signs = np.where(atoms.numbers == 11, 1.0, -1.0)
    atoms.set_initial_charges(signs * rng.uniform(0.7, 1.1, len(atoms)))
    return atoms


def species_keywords(numbers: np.ndarray) -> str:
    keywords, types = [], []
    for index, number in enumerate(sorted(set(numbers.tolist())), start=1):
        keywords.append(f"SPECIES{index}=" + ",".join(str(m + 1) for m in np.flatnonzero(numbers == number)))
        types.append(str(number))
    return " ".join(keywords) + " SPECIES_TO_TYPES=" + ",".join(types)


def write_masses_charges(path: str, masses: np.ndarray, charges: np.ndarray) -> None:
    """A `plumed driver --mc` file (the format DUMPMASSCHARGE writes), in PLUMED's default amu and e."""
    with open(path, "w") as handle:
        handle.write("#! FIELDS index mass charge\n")
        for index, (mass, charge) in enumerate(zip(masses, charges)):
            handle.write(f"{index} {mass:.17e} {charge:.17e}\n")


def driver_run(directory: str, text: str, trajectory: str, *extra: str):
    """One `plumed driver` run; returns (colvar, forces in kJ/mol/nm, virial)."""
    result = run_driver(
        directory,
        text,
        trajectory,
        "--dump-forces",
        "forces.xyz",
        "--dump-forces-fmt",
        FMT,
        "--dump-full-virial",
        *extra,
    )
    check_run(result)
    virial, forces = read_forces(os.path.join(directory, "forces.xyz"))
    return read_colvar(os.path.join(directory, "COLVAR")), forces[0], virial[0]


# ---- charges -------------------------------------------------------------------------------------


def test_coulomb_single_point_matches_reference(tmp_path, plugin, input_models):
    """evaluate_with_plumed (what `atomplug crosscheck` runs): charges from the Atoms through
    `plumed driver --mc`, PLUMED's default units; energy and forces against the numpy double sum."""
    atoms = salt()
    result = evaluate_with_plumed(input_models["coulomb"], atoms, str(tmp_path))
    energy, forces = coulomb_reference(
        atoms.positions, atoms.get_initial_charges(), atoms.cell.array, atoms.pbc, COULOMB_CUTOFF,
        LAMMPS_METAL_COULOMB_CONSTANT,
    )  # fmt: skip
    assert abs(energy) > 1.0
    assert result["energy"] == pytest.approx(energy, rel=RTOL, abs=0.0)
    assert_close(result["forces"], forces, rtol=RTOL, what="forces")


def test_coulomb_in_other_plumed_units(tmp_path, plugin, input_models):
    """UNITS LENGTH=A ENERGY=kcal/mol CHARGE=0.5: PLUMED holds the charges in units of 0.5 e and the
    action says so; the CV is then the reference energy in kcal/mol, and the forces PLUMED applies (a
    RESTRAINT, dumped in the driver's kJ/mol/nm) are kappa (E - E0) times the reference forces.
    (kcal/mol, not eV: PLUMED's own eV is 96.48530749925793 kJ/mol, 2.6e-7 from CODATA's.)"""
    atoms = salt()
    energy, forces = coulomb_reference(
        atoms.positions, atoms.get_initial_charges(), atoms.cell.array, atoms.pbc, COULOMB_CUTOFF,
        LAMMPS_METAL_COULOMB_CONSTANT,
    )  # fmt: skip
    trajectory = str(tmp_path / "salt.xyz")
    write_xyz(trajectory, [atoms.positions * NM], atoms.cell.array * NM)
    write_masses_charges(str(tmp_path / "mc.dat"), atoms.get_masses(), atoms.get_initial_charges())
    energy *= conversion_factor("eV", "kcal/mol")
    kappa, at = 0.25, -10.0
    text = (
        f"UNITS LENGTH=A ENERGY=kcal/mol CHARGE=0.5\nLOAD FILE={plugin}\n"
        f"e: ATOMPLUG MODEL={input_models['coulomb']} OUTPUT=energy {species_keywords(atoms.numbers)}\n"
        f"RESTRAINT ARG=e AT={at} KAPPA={kappa}\nPRINT ARG=e FILE=COLVAR FMT={FMT}\n"
    )
    colvar, plumed_forces, _ = driver_run(str(tmp_path), text, trajectory, "--mc", "mc.dat")
    assert colvar["e"][0] == pytest.approx(energy, rel=RTOL, abs=0.0)
    # -dU/dr = -kappa (E - E0) dE/dr, in kcal/mol/Angstrom, dumped in kJ/mol/nm
    expected = kappa * (energy - at) * forces * conversion_factor("eV", "kcal/mol") * (4.184 / NM)
    assert_close(plumed_forces, expected, rtol=RTOL, what="forces")


def test_charge_and_spin_match_model_runner(tmp_path, plugin, input_models):
    """CHARGE= and SPIN= (from atoms.info, through evaluate_with_plumed) against core's ModelRunner
    on the same Atoms; the charge and spin terms are a large part of the energy."""
    rng = np.random.default_rng(8)
    numbers = [8, 6, 1, 1, 8, 1, 6, 1, 1, 1]
    atoms = Atoms(numbers=numbers, positions=rng.uniform(0.0, 4.0, (len(numbers), 3)))
    while np.min(np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1) + 9 * np.eye(10)) < 0.9:
        atoms.positions = rng.uniform(0.0, 4.0, (len(numbers), 3))
    atoms.info.update(charge=-1.0, spin=2.0)
    result = evaluate_with_plumed(input_models["charge_spin"], atoms, str(tmp_path))
    reference = ModelRunner(input_models["charge_spin"]).run([atoms], ["energy"], forces=True)
    neutral = atoms.copy()
    neutral.info.update(charge=0.0, spin=1.0)
    neutral_energy = ModelRunner(input_models["charge_spin"]).run([neutral], ["energy"])["energy"][0, 0]
    assert abs(reference["energy"][0, 0] - neutral_energy) > 0.5  # CHARGE and SPIN matter
    assert result["energy"] == pytest.approx(reference["energy"][0, 0], rel=RTOL, abs=0.0)
    assert_close(result["forces"], reference["forces"], rtol=RTOL, what="forces")


# ---- masses ----------------------------------------------------------------------------------------


def test_masses_match_native_center_of_mass(tmp_path, plugin, input_models):
    """The center-of-mass distance from the `masses` input against PLUMED's COM and DISTANCE (values
    and the forces of a RESTRAINT on each), with UNITS MASS=0.25: the masses reach the model in amu
    (test::mass_sum) and an output of quantity mass comes back in PLUMED's unit (test::total_mass)."""
    rng = np.random.default_rng(21)
    n_atoms = 12
    numbers = np.array([6, 8, 1] * 4)
    positions = rng.uniform(0.0, 1.2, (n_atoms, 3))  # nm
    masses = rng.uniform(1.0, 40.0, n_atoms)  # amu, so that the weighting matters
    trajectory = str(tmp_path / "molecule.xyz")
    write_xyz(trajectory, [positions], None)
    carbon = ",".join(str(i + 1) for i in np.flatnonzero(numbers == 6))
    oxygen = ",".join(str(i + 1) for i in np.flatnonzero(numbers == 8))
    model, species = input_models["center_of_mass"], "SPECIES1=" + carbon + " SPECIES2=" + oxygen
    common = (
        f"UNITS MASS=0.25\nLOAD FILE={plugin}\n"
        f"ca: COM ATOMS={carbon}\ncb: COM ATOMS={oxygen}\nref: DISTANCE ATOMS=ca,cb\n"
        f"cv: ATOMPLUG MODEL={model} OUTPUT=features {species} SPECIES_TO_TYPES=6,8\n"
        f"sum: ATOMPLUG MODEL={model} OUTPUT=test::mass_sum {species} SPECIES_TO_TYPES=6,8\n"
        f"total: ATOMPLUG MODEL={model} OUTPUT=test::total_mass {species} SPECIES_TO_TYPES=6,8\n"
        f"PRINT ARG=ref,cv,sum,total FILE=COLVAR FMT={FMT}\n"
    )
    runs = {}
    for biased in ("ref", "cv"):
        directory = tmp_path / biased
        directory.mkdir()
        write_masses_charges(str(directory / "mc.dat"), masses, np.zeros(n_atoms))
        text = common + f"RESTRAINT ARG={biased} AT=0.05 KAPPA=300.0\n"
        runs[biased] = driver_run(str(directory), text, trajectory, "--mc", "mc.dat")
    colvar = runs["cv"][0]
    in_model = (numbers == 6) | (numbers == 8)
    assert colvar["ref"][0] > 0.05
    assert colvar["cv"][0] == pytest.approx(colvar["ref"][0], rel=RTOL, abs=0.0)
    assert colvar["sum"][0] == pytest.approx(masses[in_model].sum(), rel=RTOL, abs=0.0)
    assert colvar["total"][0] == pytest.approx(masses[in_model].sum() / 0.25, rel=RTOL, abs=0.0)
    assert np.abs(runs["ref"][1]).max() > 1.0
    assert_close(runs["cv"][1], runs["ref"][1], rtol=RTOL, what="forces")


# ---- variants -----------------------------------------------------------------------------------------


def test_output_variants(tmp_path, plugin, input_models):
    """OUTPUT=energy/ccsdt and OUTPUT=features/double pick those outputs (the value and, for the
    biased one, the derivatives): against PLUMED's DISTANCE times the variant's factor."""
    rng = np.random.default_rng(2)
    positions = rng.uniform(0.0, 0.8, (3, 3))  # nm; atoms of types 6, 8, 1
    trajectory = str(tmp_path / "three.xyz")
    write_xyz(trajectory, [positions], None)
    model = input_models["variants"]
    species = "SPECIES1=1 SPECIES2=2 SPECIES3=3 SPECIES_TO_TYPES=6,8,1"
    common = (
        f"LOAD FILE={plugin}\nref: DISTANCE ATOMS=1,2\n"
        f"e: ATOMPLUG MODEL={model} OUTPUT=energy/ccsdt {species}\n"
        f"plain: ATOMPLUG MODEL={model} OUTPUT=energy {species}\n"
        f"f: ATOMPLUG MODEL={model} OUTPUT=features/double {species}\n"
        f"PRINT ARG=ref,e,plain,f FILE=COLVAR FMT={FMT}\n"
    )
    runs = {}
    for biased in ("ref", "e"):
        directory = tmp_path / biased
        directory.mkdir()
        runs[biased] = driver_run(str(directory), common + f"BIASVALUE ARG={biased}\n", trajectory)
    colvar = runs["e"][0]
    distance = colvar["ref"][0]  # nm
    per_nm = KJ_PER_MOL / NM  # kJ/mol of the model's energy per nm of distance, factor 1
    assert colvar["e"][0] == pytest.approx(3.0 * per_nm * distance, rel=RTOL, abs=0.0)
    assert colvar["plain"][0] == pytest.approx(per_nm * distance, rel=RTOL, abs=0.0)
    assert colvar["f"][0] == pytest.approx(2.0 * distance, rel=RTOL, abs=0.0)
    assert_close(runs["e"][1], 3.0 * per_nm * runs["ref"][1], rtol=RTOL, what="forces")


def test_single_point_variant(tmp_path, plugin, input_models):
    """evaluate_with_plumed(variant=...) (`atomplug crosscheck --variant`): the energy of that variant,
    and the archive's error for an unknown one."""
    rng = np.random.default_rng(6)
    atoms = Atoms(numbers=[6, 8, 1], positions=rng.uniform(0.0, 6.0, (3, 3)))
    vector = atoms.positions[1] - atoms.positions[0]
    distance = float(np.linalg.norm(vector))
    (tmp_path / "ccsdt").mkdir()
    result = evaluate_with_plumed(input_models["variants"], atoms, str(tmp_path / "ccsdt"), variant="ccsdt")
    assert result["energy"] == pytest.approx(3.0 * distance, rel=RTOL, abs=0.0)
    expected = np.zeros((3, 3))
    expected[0], expected[1] = 3.0 * vector / distance, -3.0 * vector / distance
    assert_close(result["forces"], expected, rtol=RTOL, what="forces")
    (tmp_path / "pbe").mkdir()
    with pytest.raises(ValueError, match=r"the model has no variant 'pbe' of 'energy' \(available: ccsdt\)"):
        evaluate_with_plumed(input_models["variants"], atoms, str(tmp_path / "pbe"), variant="pbe")
