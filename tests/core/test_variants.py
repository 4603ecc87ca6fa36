"""Output variants (`<name>/<variant>`): the archive's rule `variant_output`, the capabilities'
`variants()`, and the numbers of a variant (its energy, forces and per-atom energies).

The model: a soft pair repulsion s (1 - r/rc)^2 per pair, with s = 1 for `energy`, 2 for
`energy/a`, 3 for `energy/b`; plus outputs with and without variants (uncertainties, a plain-only
`test::x`, a variant-only `test::y/a`), each a known constant per structure.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase import Atoms
from torch import Tensor

from atomplug.core import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    System,
    export,
    load_model,
    read_header,
)
from atomplug.core.contract import split_variant

CUTOFF = 3.0


class VariantModel(torch.nn.Module):
    def __init__(self, energies: Dict[str, float], constants: Dict[str, float]):
        super().__init__()
        self.energy_names: List[str] = list(energies)
        self.scales: List[float] = [energies[name] for name in self.energy_names]
        self.constant_names: List[str] = list(constants)
        self.constants: List[float] = [constants[name] for name in self.constant_names]
        self.cutoff = CUTOFF

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        atomic: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            reduced = 1.0 - neighbors.distances() / self.cutoff
            pair = 0.5 * reduced * reduced
            energies = torch.zeros(len(system), dtype=system.positions.dtype)
            energies = energies.index_add(0, neighbors.pairs[:, 0], pair).index_add(0, neighbors.pairs[:, 1], pair)
            atomic.append(energies)
        results: Dict[str, Tensor] = {}
        for index, name in enumerate(self.energy_names):
            if name in outputs:
                scale = self.scales[index]
                if outputs[name].per_atom:
                    results[name] = scale * torch.cat(atomic).reshape(-1, 1)
                else:
                    results[name] = scale * torch.stack([e.sum() for e in atomic]).reshape(-1, 1)
        for index, name in enumerate(self.constant_names):
            if name in outputs:
                results[name] = torch.full((len(systems), 1), self.constants[index], dtype=torch.float64)
        return results


def export_variants(path, energies: Dict[str, float], constants: Dict[str, float]) -> str:
    outputs = {name: ModelOutput("energy", "eV", per_atom=True) for name in energies}
    outputs.update(
        {
            name: ModelOutput("energy" if name.startswith("energy") else "", "eV" if name.startswith("energy") else "")
            for name in constants
        }
    )
    capabilities = ModelCapabilities(outputs=outputs, atomic_types=[1, 8, 18], interaction_range=CUTOFF)
    export(VariantModel(energies, constants), str(path), capabilities, ModelMetadata(name="variants"))
    return str(path)


ENERGIES = {"energy": 1.0, "energy/a": 2.0, "energy/b": 3.0}
CONSTANTS = {"energy_uncertainty": 0.1, "energy_uncertainty/a": 0.2, "test::x": 7.0, "test::y/a": 8.0}


@pytest.fixture(scope="module")
def variants_path(tmp_path_factory):
    return export_variants(tmp_path_factory.mktemp("variants") / "variants.pt", ENERGIES, CONSTANTS)


@pytest.fixture(scope="module")
def only_variants_path(tmp_path_factory):
    """A model whose energy has only variants: no plain 'energy'."""
    return export_variants(
        tmp_path_factory.mktemp("variants") / "only.pt", {"energy/a": 2.0, "energy/b": 3.0}, {"test::x": 7.0}
    )


@pytest.fixture(scope="module")
def model(variants_path):
    return load_model(variants_path)


def argon_cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms("Ar8", positions=rng.uniform(0.0, 4.0, size=(8, 3)))


# ---- the rule -----------------------------------------------------------------------------------

RULE = [
    # (request, variant, output asked for)
    ("energy", "", "energy"),
    ("energy", "a", "energy/a"),
    ("energy", "b", "energy/b"),
    ("energy/per_atom", "a", "energy/a/per_atom"),  # '/per_atom' kept after the variant
    ("energy/per_atom", "", "energy/per_atom"),
    ("energy_uncertainty", "a", "energy_uncertainty/a"),
    ("energy_uncertainty", "b", "energy_uncertainty"),  # no /b: the plain output, the same for every variant
    ("test::x", "a", "test::x"),
    ("test::x", "", "test::x"),
    ("test::y", "a", "test::y/a"),
    # an output the model does not declare at all: returned as asked, for the caller's "no output" check
    ("non_conservative_forces", "a", "non_conservative_forces"),
]

RULE_ERRORS = [
    # (request, variant, message)
    ("energy", "c", "the model has no variant 'c' of 'energy' (available: a, b): choose one of those, or no variant"),
    ("energy/per_atom", "c", "the model has no variant 'c' of 'energy' (available: a, b)"),
    ("test::y", "", "the model has no plain 'test::y', only its variants a: choose one (variant=...)"),
    ("test::y", "b", "the model has no variant 'b' of 'test::y' (available: a): choose one of those, or no variant"),
]


@pytest.mark.parametrize("request_name, variant, expected", RULE)
def test_variant_output_rule(model, request_name, variant, expected):
    assert model.module.variant_output(request_name, variant) == expected  # the archive itself (C++ calls this)
    assert model.variant_output(request_name, variant) == expected
    assert ModelRunner(model).output_name(request_name, variant) == expected


@pytest.mark.parametrize("request_name, variant, message", RULE_ERRORS)
def test_variant_output_errors(model, request_name, variant, message):
    with pytest.raises(ValueError) as caught:
        model.variant_output(request_name, variant)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(torch.jit.Error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        model.module.variant_output(request_name, variant)


def test_energy_with_only_variants_needs_one(only_variants_path):
    model = load_model(only_variants_path)
    assert model.capabilities.variants() == {"energy": ["a", "b"]}
    with pytest.raises(ValueError, match=r"the model has no plain 'energy', only its variants a, b: choose one"):
        model.variant_output("energy", "")
    with pytest.raises(ValueError, match=r"no plain 'energy', only its variants a, b"):
        model.variant_output("energy/per_atom", "")
    assert model.variant_output("energy", "b") == "energy/b"
    assert model.variant_output("test::x", "b") == "test::x"
    with pytest.raises(ValueError, match=r"no variant 'c' of 'energy' \(available: a, b\)"):
        model.variant_output("energy", "c")
    # asking the entry point for the plain energy directly: the model has none
    with pytest.raises(ValueError, match=r"no output 'energy'.*energy/a, energy/b"):
        ModelRunner(model).run([argon_cluster()], ["energy"])


def test_capabilities_variants(model, variants_path):
    assert model.capabilities.variants() == {"energy": ["a", "b"], "energy_uncertainty": ["a"], "test::y": ["a"]}
    header = read_header(variants_path)
    assert ModelCapabilities.from_dict(header["capabilities"]).variants() == model.capabilities.variants()
    assert set(header["capabilities"]["outputs"]) == set(ENERGIES) | set(CONSTANTS)
    plain = ModelCapabilities(outputs={"energy": ModelOutput("energy", "eV")}, atomic_types=[1], interaction_range=1.0)
    assert plain.variants() == {}
    assert split_variant("energy/ccsdt") == ("energy", "ccsdt")
    assert split_variant("energy") == ("energy", "")
    assert split_variant("vendor::dipole/b3lyp") == ("vendor::dipole", "b3lyp")


# ---- the numbers --------------------------------------------------------------------------------


def test_each_variant_is_its_own_energy(model):
    """energy/a = 2 energy and energy/b = 3 energy: values, per-atom values, forces, virials, and
    the other outputs of the variant taken by the rule."""
    runner = ModelRunner(model)
    structures = [argon_cluster(1), argon_cluster(2)]
    plain = runner.run(structures, ["energy", "energy/per_atom"], forces=True, virial=True)
    assert np.abs(plain["forces"]).max() > 1e-2
    for variant, scale in (("a", 2.0), ("b", 3.0)):
        energy = runner.output_name("energy", variant)
        per_atom = runner.output_name("energy/per_atom", variant)
        extras = [runner.output_name(name, variant) for name in ("energy_uncertainty", "test::x")]
        result = runner.run(structures, [energy, per_atom] + extras, forces=True, virial=True, gradient_output=energy)
        np.testing.assert_allclose(result[energy], scale * plain["energy"], rtol=1e-14)
        np.testing.assert_allclose(result[per_atom], scale * plain["energy/per_atom"], rtol=1e-14)
        np.testing.assert_allclose(result["forces"], scale * plain["forces"], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(result["virial"], scale * plain["virial"], rtol=1e-13, atol=1e-15)
        uncertainty = extras[0]
        assert uncertainty == ("energy_uncertainty/a" if variant == "a" else "energy_uncertainty")
        assert np.all(result[uncertainty] == (0.2 if variant == "a" else 0.1))
        assert np.all(result["test::x"] == 7.0)


def test_variant_with_selected_atoms(model):
    """A subset of atoms (LAMMPS' local atoms): the variant's per-atom energies of those atoms."""
    runner = ModelRunner(model)
    atoms = argon_cluster(3)
    full = runner.run([atoms], ["energy/a/per_atom"])["energy/a/per_atom"][:, 0]
    selected = runner.run([atoms], ["energy/a"], selected_atoms=[1, 4, 6], use_cache=False)["energy/a"]
    assert selected[0, 0] == pytest.approx(full[[1, 4, 6]].sum(), rel=1e-14)
