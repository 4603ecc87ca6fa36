"""Model inputs (masses, velocities, charges, total charge, spin): what the entry point hands the
model, in the unit the model declared, from the engine's units.

An echo model returns every requested input as it saw it, as `echo::<name>` outputs of quantity
"" (never converted on the way out), and again as `back::<name>` with the input's own quantity
and unit (converted to the engine's unit on the way out: a round trip). References are computed
here from ase.units (CODATA), independently of core/units.py.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import ase.units as au
import numpy as np
import pytest
import torch
from ase import Atoms
from structures import displaced_triclinic_argon
from torch import Tensor

from atomplug.core import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    Structure,
    System,
    export,
    load_model,
)
from atomplug.core.contract import INPUTS
from atomplug.core.runner import inputs_from_atoms
from atomplug.core.units import engine_quantity_units

# amu and g/mol in kg, C per e, ASE's time unit in fs (ase.units.fs is one fs in ASE time units)
AMU_KG = 1.0 / au.kg
G_PER_MOL_KG = 1e-3 / au._Nav
ASE_TIME_FS = 1.0 / au.fs
AUT_FS = au._aut * 1e15
C_LIGHT = 299792458.0


class EchoModel(torch.nn.Module):
    """Requests `units` (input name -> the unit it wants) and returns them (see the module doc)."""

    def __init__(self, units: Dict[str, str]):
        super().__init__()
        self.names: List[str] = list(units)
        self.units: List[str] = [units[name] for name in self.names]
        self.quantities: List[str] = [INPUTS[name][0] for name in self.names]
        self.per_atom: List[bool] = [INPUTS[name][1] for name in self.names]

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return []

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        requested: Dict[str, ModelOutput] = {}
        for index, name in enumerate(self.names):
            requested[name] = ModelOutput(self.quantities[index], self.units[index], self.per_atom[index])
        return requested

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        results: Dict[str, Tensor] = {}
        for index, name in enumerate(self.names):
            parts = [system.get_input(name) for system in systems]
            for prefix in ["echo::", "back::"]:
                key = prefix + name
                if key in outputs:
                    if self.per_atom[index] and not outputs[key].per_atom:
                        # a per-atom input asked per structure: the sum over each system's atoms
                        results[key] = torch.stack([part.sum(dim=0) for part in parts])
                    else:
                        results[key] = torch.cat(parts)
        return results


def export_echo(path, units: Dict[str, str], back: bool = True) -> str:
    outputs = {}
    for name, unit in units.items():
        quantity, per_atom, properties = INPUTS[name]
        outputs["echo::" + name] = ModelOutput("", "", per_atom, list(properties))
        if back and quantity:
            outputs["back::" + name] = ModelOutput(quantity, unit, per_atom, list(properties))
    capabilities = ModelCapabilities(outputs=outputs, atomic_types=[1, 6, 8, 18], interaction_range=0.0)
    export(EchoModel(units), str(path), capabilities, ModelMetadata(name="echo"))
    return str(path)


def echo_names(units: Dict[str, str], prefix: str = "echo::") -> List[str]:
    return [prefix + name + ("/per_atom" if INPUTS[name][1] else "") for name in units]


_LOADED: Dict[str, object] = {}


def loaded(path: str):
    """One LoadedModel per file for the whole module (loading compiles the entry point again)."""
    if path not in _LOADED:
        _LOADED[path] = load_model(path)
    return _LOADED[path]


def make_runner(path: str, **options) -> ModelRunner:
    return ModelRunner(loaded(path), **options)


def call_entry_point(
    path: str,
    structures: Sequence[Atoms],
    outputs: Sequence[str],
    inputs: Optional[Dict[str, Tensor]],
    quantity_units: Optional[Dict[str, str]],
    length_unit: str = "Angstrom",
) -> Dict[str, Tensor]:
    """The entry point as the C++ engines call it: tensors only, inputs in the engine's units."""
    module = loaded(path).module
    return module(
        torch.tensor(np.concatenate([s.positions for s in structures])),
        torch.tensor(np.concatenate([s.numbers for s in structures]), dtype=torch.int32),
        torch.tensor(np.stack([s.cell.array for s in structures])),
        torch.tensor(np.stack([s.pbc for s in structures])),
        torch.tensor([len(s) for s in structures]),
        [],
        [],
        list(outputs),
        None,
        "energy",
        False,
        False,
        False,
        length_unit,
        "eV",
        False,
        inputs,
        quantity_units,
    )


def all_inputs(atoms: Atoms) -> Dict[str, Tensor]:
    """Every input of the echo models, from an Atoms, in ASE's units (as tensors)."""
    return {name: torch.from_numpy(values) for name, values in inputs_from_atoms(atoms, list(ALL_UNITS)).items()}


def water(seed: int = 0, n: int = 1) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms("OH2" * n, positions=rng.uniform(0.0, 6.0, size=(3 * n, 3)))
    atoms.set_initial_charges(rng.uniform(-0.8, 0.8, size=len(atoms)))
    atoms.set_masses(rng.uniform(1.0, 20.0, size=len(atoms)))
    atoms.set_velocities(rng.normal(0.0, 0.02, size=(len(atoms), 3)))
    atoms.info["charge"] = float(rng.integers(-2, 3))
    atoms.info["spin"] = float(rng.integers(1, 4))
    return atoms


ALL_UNITS = {
    "masses": "amu",
    "velocities": "Angstrom/fs",
    "charges": "e",
    "total_charge": "e",
    "spin_multiplicity": "",
}


# the same inputs wanted in other units
ALT_UNITS = {"masses": "g/mol", "velocities": "m/s", "charges": "C", "total_charge": "C"}


@pytest.fixture(scope="module")
def echo_path(tmp_path_factory):
    return export_echo(tmp_path_factory.mktemp("echo") / "echo.pt", ALL_UNITS)


@pytest.fixture(scope="module")
def alt_path(tmp_path_factory):
    return export_echo(tmp_path_factory.mktemp("echo") / "alt.pt", ALT_UNITS)


@pytest.fixture(scope="module")
def paths(echo_path, alt_path):
    return {"main": echo_path, "alt": alt_path}


# ---- conversions of each input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model, engine_unit, factor",
    [
        ("main", "amu", 1.0),
        ("main", "g/mol", G_PER_MOL_KG / AMU_KG),
        ("main", "kg", 1.0 / AMU_KG),
        ("alt", "amu", AMU_KG / G_PER_MOL_KG),
        ("alt", "g/mol", 1.0),
        ("alt", "picogram", 1e-15 / G_PER_MOL_KG),
    ],
)
def test_masses_convert(paths, model, engine_unit, factor):
    """The model wants amu (main) or g/mol (alt); the engine gives amu, g/mol, kg or picograms."""
    atoms = water(1)
    masses = np.random.default_rng(9).uniform(1.0, 20.0, size=len(atoms))
    units = dict(engine_quantity_units("ase"), mass=engine_unit)
    outputs = ["echo::masses/per_atom", "back::masses/per_atom"]
    inputs = dict(all_inputs(atoms), masses=torch.tensor(masses))
    result = call_entry_point(paths[model], [atoms], outputs, inputs, units)
    np.testing.assert_allclose(result["echo::masses/per_atom"][:, 0].numpy(), masses * factor, rtol=1e-14)
    np.testing.assert_allclose(result["back::masses/per_atom"][:, 0].numpy(), masses, rtol=1e-14)
    assert abs(AMU_KG / G_PER_MOL_KG - 1.0) < 1e-8  # amu and g/mol differ only by the molar mass constant


@pytest.mark.parametrize(
    "engine_unit, to_angstrom_per_fs",
    [
        ("Angstrom/fs", 1.0),
        ("Angstrom/ps", 1e-3),
        ("Bohr/aut", au.Bohr / AUT_FS),
        ("m/s", 1e10 / 1e15),
        ("Angstrom/asetime", 1.0 / ASE_TIME_FS),
        ("nm/ps", 10.0 * 1e-3),
        ("cm/s", 1e8 / 1e15),
    ],
)
def test_velocities_convert(paths, engine_unit, to_angstrom_per_fs):
    """The model wants Angstrom/fs (main) or m/s (alt)."""
    atoms = water(2)
    velocities = np.random.default_rng(4).normal(size=(len(atoms), 3))
    units = dict(engine_quantity_units("ase"), velocity=engine_unit)
    outputs = ["echo::velocities/per_atom", "back::velocities/per_atom"]
    inputs = dict(all_inputs(atoms), velocities=torch.tensor(velocities))
    for model, to_model in (("main", to_angstrom_per_fs), ("alt", to_angstrom_per_fs * 1e5)):
        result = call_entry_point(paths[model], [atoms], outputs, inputs, units)
        np.testing.assert_allclose(result["echo::velocities/per_atom"].numpy(), velocities * to_model, rtol=1e-13)
        np.testing.assert_allclose(result["back::velocities/per_atom"].numpy(), velocities, rtol=1e-13)


def test_ase_velocities_reach_the_model_in_its_unit(echo_path):
    """ASE's own velocity unit (Angstrom per ASE time) through ModelRunner's default ("ase"):
    velocities set as v / ase.units.fs (ASE's way of writing v Angstrom/fs) arrive as v."""
    atoms = water(3)
    v_angstrom_per_fs = np.random.default_rng(5).normal(0.0, 0.01, size=(len(atoms), 3))
    atoms.set_velocities(v_angstrom_per_fs / au.fs)
    result = make_runner(echo_path).run([atoms], ["echo::velocities/per_atom", "back::velocities/per_atom"])
    np.testing.assert_allclose(result["echo::velocities/per_atom"], v_angstrom_per_fs, rtol=1e-13)
    np.testing.assert_allclose(result["back::velocities/per_atom"], atoms.get_velocities(), rtol=1e-13)
    # and 1/2 m v^2 in amu*Angstrom^2/fs^2 is ASE's kinetic energy (eV)
    masses = make_runner(echo_path).run([atoms], ["echo::masses/per_atom"])["echo::masses/per_atom"][:, 0]
    kinetic = 0.5 * np.sum(masses * np.sum(result["echo::velocities/per_atom"] ** 2, axis=1))
    kinetic_ev = kinetic * (AMU_KG * 1e-20 / 1e-30) / au._e
    assert kinetic_ev == pytest.approx(atoms.get_kinetic_energy(), rel=1e-12)


@pytest.mark.parametrize(
    "engine_unit, to_e",
    [
        ("e", 1.0),
        ("C", 1.0 / au._e),
        ("statcoulomb", 1.0 / (10.0 * C_LIGHT) / au._e),
        ("picocoulomb", 1e-12 / au._e),
    ],
)
def test_charges_convert(paths, engine_unit, to_e):
    """The model wants e (main) or C (alt); per atom as [N] or [N, 1], per structure as [S] or [S, 1]."""
    atoms = water(6)
    charges = atoms.get_initial_charges()
    units = dict(engine_quantity_units("ase"), charge=engine_unit)
    outputs = ["echo::charges/per_atom", "back::charges/per_atom", "echo::total_charge", "back::total_charge"]
    for model, to_model in (("main", to_e), ("alt", to_e * au._e)):
        for shape in [(len(atoms),), (len(atoms), 1)]:
            for total in [torch.tensor([-1.5]), torch.tensor([[-1.5]])]:
                inputs = dict(all_inputs(atoms), charges=torch.tensor(charges).reshape(shape), total_charge=total)
                result = call_entry_point(paths[model], [atoms], outputs, inputs, units)
                assert result["echo::charges/per_atom"].shape == (len(atoms), 1)
                assert result["echo::total_charge"].shape == (1, 1)
                np.testing.assert_allclose(
                    result["echo::charges/per_atom"][:, 0].numpy(), charges * to_model, rtol=1e-14
                )
                np.testing.assert_allclose(result["back::charges/per_atom"][:, 0].numpy(), charges, rtol=1e-14)
                assert result["echo::total_charge"].item() == pytest.approx(-1.5 * to_model, rel=1e-14)
                assert result["back::total_charge"].item() == pytest.approx(-1.5, rel=1e-14)


def test_spin_multiplicity_passes_unconverted(echo_path):
    atoms = water(7)
    atoms.info["spin"] = 3
    for engine in ("ase", "lammps:si", "lammps:cgs"):
        runner = make_runner(echo_path, quantity_units=engine_quantity_units(engine))
        assert runner.run([atoms], ["echo::spin_multiplicity"])["echo::spin_multiplicity"][0, 0] == 3.0


def test_ase_atoms_inputs_through_model_runner(echo_path):
    """inputs_from_atoms reads ASE's conventions; ModelRunner's default units are ASE's."""
    atoms = water(8)
    result = make_runner(echo_path).run([atoms], echo_names(ALL_UNITS))
    np.testing.assert_allclose(result["echo::masses/per_atom"][:, 0], atoms.get_masses(), rtol=1e-15)
    np.testing.assert_allclose(result["echo::charges/per_atom"][:, 0], atoms.get_initial_charges(), rtol=1e-15)
    np.testing.assert_allclose(result["echo::velocities/per_atom"], atoms.get_velocities() * au.fs, rtol=1e-14)
    assert result["echo::total_charge"][0, 0] == atoms.info["charge"]
    assert result["echo::spin_multiplicity"][0, 0] == atoms.info["spin"]
    assert sorted(inputs_from_atoms(atoms, list(ALL_UNITS))) == sorted(ALL_UNITS)


# ---- batches ---------------------------------------------------------------------------------


def test_batched_systems_get_their_own_rows(echo_path):
    structures = [water(10, n=1), water(11, n=3), water(12, n=2)]
    for index, atoms in enumerate(structures):
        atoms.info["charge"] = float(index - 1)
        atoms.info["spin"] = float(index + 1)
    outputs = echo_names(ALL_UNITS) + ["echo::charges", "echo::masses"]
    batch = make_runner(echo_path).run(structures, outputs)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in structures])])
    for index, atoms in enumerate(structures):
        rows = slice(offsets[index], offsets[index + 1])
        np.testing.assert_allclose(batch["echo::charges/per_atom"][rows, 0], atoms.get_initial_charges(), rtol=1e-15)
        np.testing.assert_allclose(batch["echo::masses/per_atom"][rows, 0], atoms.get_masses(), rtol=1e-15)
        np.testing.assert_allclose(batch["echo::velocities/per_atom"][rows], atoms.get_velocities() * au.fs, rtol=1e-14)
        assert batch["echo::total_charge"][index, 0] == index - 1
        assert batch["echo::spin_multiplicity"][index, 0] == index + 1
        # a per-atom output asked per structure: each structure's own sum
        assert batch["echo::charges"][index, 0] == pytest.approx(atoms.get_initial_charges().sum(), abs=1e-14)
        assert batch["echo::masses"][index, 0] == pytest.approx(atoms.get_masses().sum(), rel=1e-14)
        single = make_runner(echo_path).run([atoms], outputs)
        for name in outputs:
            part = batch[name][rows] if name.endswith("/per_atom") else batch[name][index : index + 1]
            np.testing.assert_array_equal(part, single[name])


def test_structure_inputs_given_by_hand(echo_path):
    """Structure.inputs in the engine's units, per atom [N] or [N, 1], per structure a scalar or [1]."""
    atoms = water(13)
    n = len(atoms)
    base = {
        "masses": atoms.get_masses(),
        "velocities": atoms.get_velocities(),
        "spin_multiplicity": np.array([2.0]),
    }
    for charges, total in [
        (atoms.get_initial_charges(), np.array([1.0])),
        (atoms.get_initial_charges().reshape(n, 1), np.float64(1.0)),
    ]:
        structure = Structure(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, dict(base, charges=charges, total_charge=total)
        )
        result = make_runner(echo_path).run([structure], echo_names(ALL_UNITS))
        np.testing.assert_allclose(result["echo::charges/per_atom"][:, 0], atoms.get_initial_charges(), rtol=1e-15)
        assert result["echo::total_charge"][0, 0] == 1.0


# ---- outputs of the new quantities -----------------------------------------------------------


class DipoleModel(torch.nn.Module):
    """Outputs sum_i q_i r_i (dipole), the charges (charge, per atom) and a velocity, from the
    charges input, in the units given at construction."""

    def __init__(self, dipole_unit: str):
        super().__init__()
        self.dipole_unit = dipole_unit
        self.debye_per_e_angstrom = au._e * 1e-10 / (1e-21 / C_LIGHT)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return []

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        return {
            "charges": ModelOutput("charge", "e", True),
            "velocities": ModelOutput("velocity", "Angstrom/fs", True),
        }

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        dipoles: List[Tensor] = []
        charges: List[Tensor] = []
        velocities: List[Tensor] = []
        for system in systems:
            q = system.get_input("charges")
            dipole = (q * system.positions).sum(dim=0)  # e*Angstrom
            if self.dipole_unit == "D":
                dipole = dipole * self.debye_per_e_angstrom
            dipoles.append(dipole)
            charges.append(q)
            velocities.append(system.get_input("velocities"))
        results: Dict[str, Tensor] = {}
        if "test::dipole" in outputs:
            results["test::dipole"] = torch.stack(dipoles)
        if "test::charges" in outputs:
            results["test::charges"] = torch.cat(charges)
        if "test::velocities" in outputs:
            results["test::velocities"] = torch.cat(velocities)
        return results


def export_dipole(path, dipole_unit: str) -> str:
    capabilities = ModelCapabilities(
        outputs={
            "test::dipole": ModelOutput("dipole", dipole_unit, False, ["x", "y", "z"]),
            "test::charges": ModelOutput("charge", "e", True),
            "test::velocities": ModelOutput("velocity", "Angstrom/fs", True, ["x", "y", "z"]),
        },
        atomic_types=[1, 8],
        interaction_range=0.0,
    )
    export(DipoleModel(dipole_unit), str(path), capabilities, ModelMetadata(name="dipole"))
    return str(path)


def test_outputs_of_charge_dipole_and_velocity_are_in_the_engines_units(tmp_path):
    atoms = water(14, n=2)
    q = atoms.get_initial_charges()
    dipole_e_angstrom = (q[:, None] * atoms.positions).sum(axis=0)
    e_angstrom_in_debye = au._e * 1e-10 / (1e-21 / C_LIGHT)
    e_angstrom_in_statc_cm = au._e * 1e-10 / (1.0 / (10.0 * C_LIGHT) * 1e-2)
    path_e = export_dipole(tmp_path / "e.pt", "e*Angstrom")
    path_d = export_dipole(tmp_path / "d.pt", "D")
    outputs = ["test::dipole", "test::charges/per_atom", "test::velocities/per_atom"]

    ase = make_runner(path_e).run([atoms], outputs)
    np.testing.assert_allclose(ase["test::dipole"][0], dipole_e_angstrom, rtol=1e-13)
    np.testing.assert_allclose(ase["test::charges/per_atom"][:, 0], q, rtol=1e-15)
    np.testing.assert_allclose(ase["test::velocities/per_atom"], atoms.get_velocities(), rtol=1e-13)
    # a model answering in Debye: ASE still gets e*Angstrom
    np.testing.assert_allclose(
        make_runner(path_d).run([atoms], ["test::dipole"])["test::dipole"][0], dipole_e_angstrom, rtol=1e-13
    )

    # LAMMPS units cgs: statcoulomb, cm (the dipole in statC*cm, 1 D = 1e-18 statC*cm)
    cgs = make_runner(
        path_e, length_unit="cm", energy_unit="erg", quantity_units=engine_quantity_units("lammps:cgs")
    ).run(
        [
            Structure(
                atoms.numbers,
                atoms.positions * 1e-8,
                atoms.cell.array * 1e-8,
                atoms.pbc,
                {
                    "charges": q * au._e * 10.0 * C_LIGHT,  # e -> statcoulomb
                    "velocities": atoms.get_velocities() * au.fs * 1e-8 / 1e-15,  # Angstrom/fs -> cm/s
                },
            )
        ],
        outputs,
    )
    np.testing.assert_allclose(cgs["test::dipole"][0], dipole_e_angstrom * e_angstrom_in_statc_cm, rtol=1e-12)
    np.testing.assert_allclose(cgs["test::dipole"][0] * 1e18, dipole_e_angstrom * e_angstrom_in_debye, rtol=1e-12)
    np.testing.assert_allclose(cgs["test::charges/per_atom"][:, 0], q * au._e * 10.0 * C_LIGHT, rtol=1e-13)
    np.testing.assert_allclose(
        cgs["test::velocities/per_atom"], atoms.get_velocities() * au.fs * 1e-8 / 1e-15, rtol=1e-13
    )

    # LAMMPS units si: C, m/s; the dipole in C*m
    si = make_runner(path_e, length_unit="m", energy_unit="J", quantity_units=engine_quantity_units("lammps:si")).run(
        [
            Structure(
                atoms.numbers,
                atoms.positions * 1e-10,
                atoms.cell.array * 1e-10,
                atoms.pbc,
                {
                    "charges": q * au._e,
                    "velocities": atoms.get_velocities() * au.fs * 1e5,
                },
            )
        ],
        outputs,
    )
    np.testing.assert_allclose(si["test::dipole"][0], dipole_e_angstrom * au._e * 1e-10, rtol=1e-12)
    np.testing.assert_allclose(si["test::charges/per_atom"][:, 0], q * au._e, rtol=1e-13)


# ---- models without inputs, and old-style calls ----------------------------------------------


def old_style_arguments(atoms: Atoms, runner: ModelRunner) -> list:
    pairs, shifts = zip(*runner.neighbor_lists(Structure.from_atoms(atoms), use_cache=False))
    return [
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers, dtype=torch.int32),
        torch.tensor(atoms.cell.array)[None],
        torch.tensor(atoms.pbc)[None],
        torch.tensor([len(atoms)]),
        [torch.from_numpy(p) for p in pairs],
        [torch.from_numpy(s) for s in shifts],
        ["energy", "energy/per_atom"],
        None,
        "energy",
        True,
        True,
        False,
        "Angstrom",
        "eV",
    ]


def test_a_model_without_inputs_runs_as_before(lj_model_path):
    """No inputs: ModelRunner calls the entry point with the 15 arguments of old archives, and the
    new trailing arguments, given or not, change nothing."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    runner = ModelRunner(lj_model_path)
    assert runner.input_names == [] and not runner._takes_inputs
    assert load_model(lj_model_path).module.input_names() == []
    result = runner.run([atoms], ["energy", "energy/per_atom"], forces=True, virial=True, use_cache=False)
    arguments = old_style_arguments(atoms, runner)
    module = runner.model.module
    for extra in ([], [False], [False, None, None], [False, {}, engine_quantity_units("ase")]):
        raw = module(*(arguments + extra))
        for key in ("energy", "energy/per_atom", "forces", "virial"):
            # to rounding: TorchScript's profiling executor optimises the graph after the first calls
            np.testing.assert_allclose(
                raw[key].numpy(), result[key], rtol=1e-13, atol=1e-16, err_msg=f"{key} with {extra}"
            )
    assert result["energy"][0, 0] < 0.0 and np.abs(result["forces"]).max() > 1e-3


def test_old_style_call_of_a_model_with_inputs_names_the_missing_input(echo_path):
    atoms = water(15)
    module = load_model(echo_path).module
    arguments = [
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers, dtype=torch.int32),
        torch.zeros((1, 3, 3), dtype=torch.float64),
        torch.zeros((1, 3), dtype=torch.bool),
        torch.tensor([len(atoms)]),
        [],
        [],
        ["echo::spin_multiplicity"],
        None,
        "energy",
        False,
        False,
        False,
        "Angstrom",
        "eV",
    ]
    with pytest.raises(torch.jit.Error, match=r"the model needs the input '\w+', which the engine did not give"):
        module(*arguments)
    assert module.input_names() == list(ALL_UNITS)
