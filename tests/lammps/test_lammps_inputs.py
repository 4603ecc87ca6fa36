"""Model inputs, output variants, extra outputs and the uncertainty threshold in `pair_style atomplug`,
in the real LAMMPS (float64), against native physics where LAMMPS has it:

- charges: `examples/coulomb.py` vs LAMMPS' own `pair_style coul/cut` with `atom_style charge`, on a
  rattled rock-salt crystal (cubic and triclinic), `units metal` and `units real`, 1, 2 and 4 ranks:
  energy, forces, pressure tensor and per-atom energies;
- total charge and spin multiplicity (`charge`, `spin`, numbers or equal-style variables changed
  between runs): the charge/spin toy vs core's `ModelRunner` on the same structure, 1 and 2 ranks;
- masses and velocities: the kinetic toy's per-atom `atomplug::kinetic_energy` (fix pair) and its
  sum (compute pair) vs LAMMPS' `compute ke/atom` and `compute ke`, `units metal` and `units real`;
- a variant (`variant alt`) of a two-headed model, and an unknown one;
- `uncertainty_threshold`: one warning per step, and `stop` at the first step above it.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from lammps_harness import lammps_cell, read_dump, read_values, relative_difference, run_lmp, run_python
from structures import hco_liquid
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
from atomplug.core.units import conversion_factor, engine_quantity_units, engine_units

TOLERANCE = 1e-10
LAMMPS_ORDER = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]  # xx yy zz xy xz yz
# LAMMPS' Coulomb constants (force.cpp qqr2e): units metal in eV*A/e^2, units real in kcal/mol*A/e^2
QQR2E = {"metal": 14.399645, "real": 332.06371}
CUTOFF = 6.0


# ---- charges: the Coulomb example vs LAMMPS coul/cut ---------------------------------------------


def rock_salt(triclinic: bool) -> Atoms:
    """64 atoms of rattled NaCl (a = 5.64 A) with unequal charges summing to zero; sheared if asked."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(5)
    charges = np.where(atoms.numbers == 11, 1.0, -1.0) * rng.uniform(0.7, 1.0, len(atoms))
    charges -= charges.mean()
    atoms.set_initial_charges(charges)
    if triclinic:
        shear = np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [-0.1, 0.2, 1.0]])
        atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.1, seed=3)
    atoms.wrap()
    return atoms


def coulomb_block(label: str, units: str, data: str, pair: str, coeff: str) -> str:
    return f"""
clear
units {units}
atom_style charge
boundary p p p
read_data {data}
pair_style {pair}
pair_coeff {coeff}
compute pe all pe/atom
compute pv all pressure NULL virial
thermo_style custom step pe
dump d all custom 1 {label}.dump id fx fy fz c_pe
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values.txt screen no
"""


@pytest.fixture(scope="module")
def coulomb_runs(tmp_path_factory, plugin):
    """Native coul/cut (1 rank) and the Coulomb model (1, 2, 4 ranks) on the same data files.

    `units real`: LAMMPS' constant there is 332.06371 kcal/mol*A/e^2, which is not 14.399645 eV*A/e^2
    converted (the two are rounded independently, ~1e-7 apart). The model for real is exported
    with k = 332.06371 kcal/mol*A/e^2 converted to eV*A/e^2 by core's table, so that the entry
    point's eV -> kcal/mol conversion gives LAMMPS' number back to ~1e-16: the comparison then tests
    the code (charges in, energy out, units) at 1e-10, not two constants' rounding.
    """
    from atomplug.examples.coulomb import export_coulomb

    directory = tmp_path_factory.mktemp("lammps-coulomb")
    models = {
        "metal": str(directory / "coulomb-metal.pt"),
        "real": str(directory / "coulomb-real.pt"),
    }
    export_coulomb(models["metal"], cutoff=CUTOFF, coulomb_constant=QQR2E["metal"])
    export_coulomb(models["real"], cutoff=CUTOFF, coulomb_constant=QQR2E["real"] * conversion_factor("kcal/mol", "eV"))
    for name, triclinic in (("cubic", False), ("triclinic", True)):
        ase.io.write(
            str(directory / f"{name}.data"),
            rock_salt(triclinic),
            format="lammps-data",
            specorder=["Na", "Cl"],
            masses=True,
            atom_style="charge",
        )
    cases = [("metal", "cubic"), ("metal", "triclinic"), ("real", "cubic")]
    native = "".join(
        coulomb_block(f"native-{units}-{box}", units, f"{box}.data", f"coul/cut {CUTOFF}", "* *")
        for units, box in cases
    )
    run_lmp(directory, native, 1, name="in.native")
    for nprocs in (1, 2, 4):
        text = "".join(
            coulomb_block(
                f"model-{units}-{box}-{nprocs}", units, f"{box}.data", f"atomplug {models[units]}", "* * Na Cl"
            )
            for units, box in cases
        )
        run_lmp(directory, text, nprocs, name=f"in.model-{nprocs}")
    return directory, read_values(directory / "values.txt")


@pytest.mark.parametrize("nprocs", [1, 2, 4])
@pytest.mark.parametrize("units, box", [("metal", "cubic"), ("metal", "triclinic"), ("real", "cubic")])
def test_coulomb_model_matches_lammps_coul_cut(coulomb_runs, units, box, nprocs):
    directory, values = coulomb_runs
    native, model = values[f"native-{units}-{box}"], values[f"model-{units}-{box}-{nprocs}"]
    assert abs(native["pe"]) > 1.0  # a real test: a crystal's Coulomb energy is far from zero
    assert abs(model["pe"] - native["pe"]) <= TOLERANCE * abs(native["pe"])
    keys = ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")
    assert relative_difference([model[k] for k in keys], [native[k] for k in keys]) <= TOLERANCE
    native_dump = read_dump(directory / f"native-{units}-{box}.dump")
    model_dump = read_dump(directory / f"model-{units}-{box}-{nprocs}.dump")
    forces = [np.stack([d[c] for c in ("fx", "fy", "fz")], axis=1) for d in (model_dump, native_dump)]
    assert np.max(np.abs(forces[1])) > 0.1
    assert relative_difference(forces[0], forces[1]) <= TOLERANCE
    assert relative_difference(model_dump["c_pe"], native_dump["c_pe"]) <= TOLERANCE


# ---- total charge and spin multiplicity vs the core ---------------------------------------------

SPECIES = ["H", "C", "O"]
# (label, pair_style keywords, commands before, total charge, spin) in one LAMMPS session: the
# variables are redefined between runs, and the pair style reads them at every step
CHARGE_SPIN_RUNS = [
    ("numbers", "charge -1 spin 2", "", -1.0, 2.0),
    ("variables-a", "charge v_q spin v_s", "variable q equal -1\nvariable s equal 2", -1.0, 2.0),
    ("variables-b", None, "variable q equal 1.5\nvariable s equal 3", 1.5, 3.0),
    ("variables-c", None, "variable q equal 0.25*2\nvariable s equal 1", 0.5, 1.0),
]


@pytest.fixture(scope="module")
def charge_spin_runs(tmp_path_factory, plugin):
    from atomplug.examples.inputs import export_charge_spin

    directory = tmp_path_factory.mktemp("lammps-charge-spin")
    model = str(directory / "charge-spin.pt")
    export_charge_spin(model)
    atoms = hco_liquid(n_molecules=16, seed=31)
    ase.io.write(str(directory / "liquid.data"), atoms, format="lammps-data", specorder=SPECIES, masses=True)
    for nprocs in (1, 2):
        text = "units metal\natom_style atomic\nread_data liquid.data\ncompute pe all pe/atom\n"
        text += "compute pv all pressure NULL virial\n"
        for label, keywords, before, _, _ in CHARGE_SPIN_RUNS:
            text += before + "\n"
            if keywords is not None:
                text += f"pair_style atomplug {model} {keywords}\npair_coeff * * {' '.join(SPECIES)}\n"
            name = f"{label}-{nprocs}"
            text += f"""
dump d all custom 1 {name}.dump id type x y z fx fy fz c_pe
dump_modify d sort id format float %.17g
run 0
undump d
print "{name} pe=$(pe:%.17g) vol=$(vol:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values.txt screen no
"""
        run_lmp(directory, text, nprocs, name=f"in.charge-spin-{nprocs}")
    return directory, model, read_values(directory / "values.txt")


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("run", CHARGE_SPIN_RUNS, ids=[r[0] for r in CHARGE_SPIN_RUNS])
def test_charge_and_spin_match_the_core(charge_spin_runs, run, nprocs):
    directory, model, values = charge_spin_runs
    label, _, _, charge, spin = run
    name = f"{label}-{nprocs}"
    dump = read_dump(directory / f"{name}.dump")
    numbers = {1: 1, 2: 6, 3: 8}
    atoms = Atoms(
        numbers=[numbers[int(t)] for t in dump["type"]],
        positions=np.stack([dump["x"], dump["y"], dump["z"]], axis=1),
        cell=lammps_cell(dump),
        pbc=True,
    )
    atoms.info.update(charge=charge, spin=spin)
    reference = ModelRunner(model).run(
        [atoms], ["energy", "energy/per_atom"], forces=True, virial=True, use_cache=False
    )
    energy = reference["energy"][0, 0]
    assert abs(values[name]["pe"] - energy) <= TOLERANCE * abs(energy)
    forces = np.stack([dump[c] for c in ("fx", "fy", "fz")], axis=1)
    assert relative_difference(forces, reference["forces"][0 : len(atoms)]) <= TOLERANCE
    assert relative_difference(dump["c_pe"], reference["energy/per_atom"][:, 0]) <= TOLERANCE
    virial = reference["virial"][0]
    nktv2p = 1.6021765e6  # LAMMPS units metal, bar per eV/A^3 (update.cpp)
    pressure = np.array([values[name][k] for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")])
    expected = np.array([0.5 * (virial[a, b] + virial[b, a]) for a, b in LAMMPS_ORDER])
    assert relative_difference(pressure * values[name]["vol"] / nktv2p, expected) <= TOLERANCE


def test_charge_and_spin_change_the_energy(charge_spin_runs):
    """The variables redefined between runs are read at every step: each run has its own energy."""
    _, _, values = charge_spin_runs
    energies = [values[f"{label}-1"]["pe"] for label, *_ in CHARGE_SPIN_RUNS]
    assert energies[0] == pytest.approx(energies[1], rel=1e-14)  # numbers and variables agree
    assert len({round(e, 9) for e in energies[1:]}) == 3


# ---- masses and velocities: kinetic energy vs LAMMPS' own ---------------------------------------

MVV2E_DRIVER = """
from lammps import lammps
for units in ("metal", "real"):
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.command("units " + units)
    print(units, repr(lmp.extract_global("mvv2e")))
    lmp.close()
"""


@pytest.fixture(scope="module")
def kinetic_runs(tmp_path_factory, plugin):
    from atomplug.examples.inputs import export_kinetic

    directory = tmp_path_factory.mktemp("lammps-kinetic")
    model = str(directory / "kinetic.pt")
    export_kinetic(model)
    for nprocs in (1, 2):
        text = ""
        for units in ("metal", "real"):
            label = f"{units}-{nprocs}"
            # two types of different mass, so that masses per type are read per atom
            text += f"""
clear
units {units}
lattice fcc 5.26
region box block 0 2 0 2 0 2
create_box 2 box
create_atoms 1 box
set type 1 type/fraction 2 0.4 8
mass 1 39.948
mass 2 15.999
velocity all create 600 4928459 loop geom
{"comm_modify vel yes" if nprocs > 1 else ""}
pair_style atomplug {model} outputs atomplug::kinetic_energy
pair_coeff * * Ar O
compute ke all ke
compute kea all ke/atom
compute pair all pair atomplug
fix kinetic all pair 1 atomplug atomplug::kinetic_energy 1
thermo_style custom step pe c_ke c_pair[1]
dump d all custom 1 {label}.dump id mass vx vy vz c_kea f_kinetic
dump_modify d sort id format float %.17g
run 0
print "{label} ke=$(c_ke:%.17g) pair=$(c_pair[1]:%.17g)" append values.txt screen no
"""
        run_lmp(directory, text, nprocs, name=f"in.kinetic-{nprocs}")
    mvv2e = dict(line.split() for line in run_python(directory, MVV2E_DRIVER).stdout.split("\n") if line.strip())
    return directory, read_values(directory / "values.txt"), {k: float(v) for k, v in mvv2e.items()}


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("units", ["metal", "real"])
def test_kinetic_energy_from_masses_and_velocities(kinetic_runs, units, nprocs):
    """Per atom (fix pair) and summed (compute pair) 1/2 m v^2 from the masses and velocities inputs.

    Against 1/2 m v^2 of the dumped masses and velocities, converted by core's unit table: 1e-12
    (the model's chain g/mol -> amu, A/ps -> A/fs, amu*A^2/fs^2 -> eV is the same product of
    factors, only rounded differently). Against LAMMPS' `compute ke/atom`: LAMMPS converts m v^2
    with its own mvv2e, typed with 8 digits (metal 1.0364269e-4 eV per g/mol*(A/ps)^2; CODATA
    gives 1.03642696...e-4, 6e-8 away), so the ratio of the two must be exactly core's factor over
    LAMMPS' mvv2e (to 1e-12); the values themselves agree to that constant's 1e-7.
    """
    directory, values, mvv2e = kinetic_runs
    label = f"{units}-{nprocs}"
    dump = read_dump(directory / f"{label}.dump")
    energy_unit = engine_units(f"lammps:{units}")[0]
    quantity = engine_quantity_units(f"lammps:{units}")
    factor = conversion_factor(f"({quantity['mass']})*({quantity['velocity']})^2", energy_unit)
    speed2 = dump["vx"] ** 2 + dump["vy"] ** 2 + dump["vz"] ** 2
    expected = 0.5 * dump["mass"] * speed2 * factor
    assert len(set(dump["mass"])) == 2
    assert relative_difference(dump["f_kinetic"], expected) <= 1e-12
    assert relative_difference(dump["f_kinetic"] / dump["c_kea"], np.full(len(speed2), factor / mvv2e[units])) <= 1e-12
    assert relative_difference(dump["f_kinetic"], dump["c_kea"]) <= 1e-7
    total = values[label]
    assert abs(total["pair"] - expected.sum()) <= 1e-12 * expected.sum()
    assert abs(total["pair"] / total["ke"] - factor / mvv2e[units]) <= 1e-12


# ---- variants -----------------------------------------------------------------------------------


class TwoHeads(torch.nn.Module):
    """eps_head (1 - r/rc)^2 per pair for each head (energy, energy/alt), half to each atom; a
    3-property output test::triple (and its variant test::triple/alt) = (1, 2, 3) x that head's
    energy; optionally an energy_uncertainty = scale * energy (per atom, or per structure only)."""

    def __init__(self, strengths: Dict[str, float], uncertainty_scale: float = 0.0):
        super().__init__()
        self.strengths = strengths
        self.uncertainty_scale = uncertainty_scale
        self.cutoff = 4.0

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        results: Dict[str, Tensor] = {}
        atomics: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            reduced = 1.0 - neighbors.distances() / self.cutoff
            pair = reduced * reduced
            atomic = torch.zeros(len(system), dtype=system.positions.dtype, device=system.positions.device)
            atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair)
            atomics.append(atomic.index_add(0, neighbors.pairs[:, 1], 0.5 * pair))
        for name, strength in self.strengths.items():
            if name in outputs:
                results[name] = self._shaped(atomics, strength, outputs[name].per_atom)
            triple = "test::triple" + name[len("energy") :]
            if triple in outputs:
                single = self._shaped(atomics, strength, outputs[triple].per_atom)
                results[triple] = torch.cat([single, 2.0 * single, 3.0 * single], dim=1)
        if "energy_uncertainty" in outputs:
            strength = self.uncertainty_scale * self.strengths["energy"]
            results["energy_uncertainty"] = self._shaped(atomics, strength, outputs["energy_uncertainty"].per_atom)
        return results

    def _shaped(self, atomics: List[Tensor], strength: float, per_atom: bool) -> Tensor:
        if per_atom:
            return strength * torch.cat(atomics).reshape(-1, 1)
        return strength * torch.stack([a.sum() for a in atomics]).reshape(-1, 1)


def export_two_heads(path: str, uncertainty: Optional[bool] = None, scale: float = 0.0) -> None:
    """energy (0.3 eV) and energy/alt (0.7 eV); with `uncertainty` True (per atom) or False (per
    structure only), also energy_uncertainty = scale * energy."""
    outputs = {
        "energy": ModelOutput(quantity="energy", unit="eV", per_atom=True),
        "energy/alt": ModelOutput(quantity="energy", unit="eV", per_atom=True),
        "test::triple": ModelOutput(quantity="energy", unit="eV", per_atom=True, properties=["a", "b", "c"]),
        "test::triple/alt": ModelOutput(quantity="energy", unit="eV", per_atom=True, properties=["a", "b", "c"]),
    }
    if uncertainty is not None:
        outputs["energy_uncertainty"] = ModelOutput(quantity="energy", unit="eV", per_atom=uncertainty)
    capabilities = ModelCapabilities(
        outputs=outputs, atomic_types=[18], interaction_range=4.0, supported_devices=["cpu"]
    )
    metadata = ModelMetadata(name="two-heads", description="two repulsion strengths, for variants")
    export(TwoHeads({"energy": 0.3, "energy/alt": 0.7}, scale), path, capabilities, metadata)


ARGON = """
units metal
lattice fcc 3.9
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass * 39.948
displace_atoms all random 0.1 0.1 0.1 4185
"""


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory, plugin):
    """The two-headed model without and with `variant alt`, with its 3-property output, on 2 ranks."""
    directory = tmp_path_factory.mktemp("lammps-variant")
    model = str(directory / "two-heads.pt")
    export_two_heads(model)
    text = ""
    for label, keywords in (("plain", ""), ("alt", "variant alt")):
        text += f"""
clear
{ARGON}
pair_style atomplug {model} {keywords} outputs test::triple
pair_coeff * * Ar
compute pv all pressure NULL virial
compute pe all pe/atom
compute triple all pair atomplug
fix triple all pair 1 atomplug test::triple[1] 1 test::triple[2] 1 test::triple[3] 1
dump d all custom 1 {label}.dump id fx fy fz c_pe f_triple[1] f_triple[2] f_triple[3]
dump_modify d sort id format float %.17g
run 0
print "{label} pe=$(pe:%.17g) pxx=$(c_pv[1]:%.17g) pxy=$(c_pv[4]:%.17g) t1=$(c_triple[1]:%.17g) t2=$(c_triple[2]:%.17g) t3=$(c_triple[3]:%.17g)" append values.txt screen no
"""
    result = run_lmp(directory, text, 2)
    dumps = {label: read_dump(directory / f"{label}.dump") for label in ("plain", "alt")}
    return result.stdout, read_values(directory / "values.txt"), dumps


def test_variant_gives_the_variant_energy_and_forces(variant_runs):
    stdout, values, dumps = variant_runs
    assert "variant alt: energy from 'energy/alt'" in stdout
    assert "output 'test::triple/alt': compute pair vector entries 1-3, per atom with fix pair" in stdout
    ratio = 0.7 / 0.3
    assert values["plain"]["pe"] > 1.0
    for key in ("pe", "pxx", "pxy"):
        assert abs(values["alt"][key] - ratio * values["plain"][key]) <= 1e-12 * abs(values["alt"][key])
    forces = [np.stack([dumps[label][c] for c in ("fx", "fy", "fz")], axis=1) for label in ("plain", "alt")]
    assert relative_difference(forces[1], ratio * forces[0]) <= 1e-12
    assert relative_difference(dumps["alt"]["c_pe"], ratio * dumps["plain"]["c_pe"]) <= 1e-12


@pytest.mark.parametrize("label", ["plain", "alt"])
def test_multi_property_output_per_atom_and_summed(variant_runs, label):
    """test::triple = (1, 2, 3) x the head's per-atom energy: fix pair's three fields and compute
    pair's three entries (summed over 2 ranks), in the chosen variant."""
    _, values, dumps = variant_runs
    dump = dumps[label]
    for k in (1, 2, 3):
        assert relative_difference(dump[f"f_triple[{k}]"], k * dump["c_pe"]) <= 1e-12
        assert abs(values[label][f"t{k}"] - k * values[label]["pe"]) <= 1e-12 * abs(values[label]["pe"])


# ---- uncertainty_threshold ----------------------------------------------------------------------

WARNING = re.compile(
    r"WARNING: pair_style atomplug: two-heads: energy uncertainty (\S+) eV exceeds the threshold (\S+) eV at "
    r"step (\d+)(?: \(largest share on atom (\d+): (\S+) eV\))?: the model is extrapolating, its energies and "
    r"forces here are not trustworthy"
)


def uncertainty_input(model: str, keywords: str, steps: int, extra: str = "") -> str:
    return f"""
{ARGON}
velocity all create 3000 87287 loop geom
{extra}
pair_style atomplug {model} {keywords}
pair_coeff * * Ar
{"compute pair all pair atomplug" if "outputs" in keywords else ""}
fix nve all nve
timestep 0.002
thermo_style custom step pe {"c_pair[1]" if "outputs" in keywords else ""}
thermo_modify format float %.17g
thermo 1
run {steps}
"""


def test_uncertainty_threshold_warns_once_per_step(tmp_path, plugin):
    """A per-structure uncertainty (one rank) above the threshold at every step: one warning per step,
    with the value compute pair also reports (the same output listed with the keyword outputs)."""
    model = str(tmp_path / "uncertain.pt")
    export_two_heads(model, uncertainty=False, scale=0.1)
    text = uncertainty_input(model, "outputs energy_uncertainty uncertainty_threshold 0.01", 3)
    result = run_lmp(tmp_path, text)
    output = " ".join(result.stdout.split())  # LAMMPS wraps long lines
    warnings = WARNING.findall(output)
    assert [int(w[2]) for w in warnings] == [0, 1, 2, 3], result.stdout[-3000:]
    thermo = {
        int(line.split()[0]): float(line.split()[2])
        for line in result.stdout.splitlines()
        if re.match(r"^\s+\d+\s+\S+\s+\S+\s*$", line)
    }
    for value, threshold, step, _, _ in warnings:
        assert float(threshold) == 0.01
        assert float(value) == pytest.approx(thermo[int(step)], rel=1e-3)  # printed with 4 digits


def test_uncertainty_threshold_stop_ends_the_run_at_the_step(tmp_path, plugin):
    """Per-atom uncertainty on two ranks: first the values along a short run (compute pair), then the
    same run with the threshold between them stops at the first step above it, naming the step, the
    value and the atom with the largest share."""
    model = str(tmp_path / "uncertain.pt")
    export_two_heads(model, uncertainty=True, scale=0.1)
    steps = 6
    first = run_lmp(tmp_path, uncertainty_input(model, "outputs energy_uncertainty", steps), 2, name="in.values")
    series = [
        float(line.split()[2]) for line in first.stdout.splitlines() if re.match(r"^\s+\d+\s+\S+\s+\S+\s*$", line)
    ]
    assert len(series) == steps + 1
    stop_at = next(k for k in range(1, steps + 1) if series[k] > max(series[:k]) * (1 + 1e-6))
    threshold = 0.5 * (max(series[:stop_at]) + series[stop_at])
    text = uncertainty_input(model, f"uncertainty_threshold {threshold!r} stop", steps)
    result = run_lmp(tmp_path, text, 2, name="in.stop", check=False)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, output[-3000:]
    assert re.search(
        rf"ERROR: pair_style atomplug: two-heads: energy uncertainty (\S+) eV exceeds the threshold \S+ eV at "
        rf"step {stop_at} \(largest share on atom \d+: \S+ eV\): the model is extrapolating, its energies and "
        rf"forces here are not trustworthy \(uncertainty_threshold \.\.\. stop: run stopped\)",
        output,
    ), output[-3000:]
    value = float(re.search(r"energy uncertainty (\S+) eV exceeds", output).group(1))
    assert value == pytest.approx(series[stop_at], rel=1e-3)


# ---- atomplug crosscheck's LAMMPS single point: inputs from the Atoms -------------------------------


@pytest.mark.parametrize("kind", ["charges", "charge-spin", "masses-velocities"])
def test_single_point_reads_the_inputs_from_the_atoms(tmp_path, plugin, kind):
    """`evaluate_with_lammps` (crosscheck) on 2 ranks, a rotated cell (LAMMPS' orientation and back)
    vs `ModelRunner` on the same Atoms: charges, info["charge"]/["spin"], masses and velocities."""
    from atomplug.examples.coulomb import export_coulomb
    from atomplug.examples.inputs import export_charge_spin, export_kinetic
    from atomplug.lammps_plugin.single_point import evaluate_with_lammps

    model = str(tmp_path / "model.pt")
    if kind == "charges":
        export_coulomb(model, cutoff=CUTOFF, coulomb_constant=QQR2E["metal"])
        atoms = rock_salt(triclinic=True)
    else:
        (export_charge_spin if kind == "charge-spin" else export_kinetic)(model)
        atoms = hco_liquid(n_molecules=12, seed=41)
        atoms.info.update(charge=-1.0, spin=2.0)
        atoms.set_velocities(np.random.default_rng(2).normal(scale=0.02, size=(len(atoms), 3)))  # A/asetime
    atoms.rotate(25, "z", rotate_cell=True)
    atoms.rotate(10, "x", rotate_cell=True)
    result = evaluate_with_lammps(model, atoms, str(tmp_path), ranks=2)
    reference = ModelRunner(model).run([atoms], ["energy"], forces=True, virial=True, use_cache=False)
    energy = reference["energy"][0, 0]
    assert abs(result["energy"] - energy) <= TOLERANCE * abs(energy)
    assert relative_difference(result["forces"], reference["forces"]) <= TOLERANCE
    # the virial comes back through LAMMPS' printed pressure: its nktv2p (asked from LAMMPS) undoes it
    assert relative_difference(result["virial"], reference["virial"][0]) <= TOLERANCE
