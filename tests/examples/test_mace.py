"""A MACE model (mace-torch) wrapped by examples/mace.py against MACE's own ASE calculator.

The model is a small ScaleShiftMACE with seeded random weights (H C O, r_max 4 A, 2 interactions,
16x0e+16x1o, float64), saved with torch.save as a user's `.model` file would be (conftest.py).
Oracle: `mace.calculators.MACECalculator` on the same file, float64: energy, forces, stress,
per-atom energies and per-atom stresses agree to rounding (~1e-15 relative); the tolerance is
1e-8 relative.
"""

import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes
from structures import hco_cluster, hco_liquid

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import load_model
from atomplug.examples import mace as mace_example  # imports mace only when called

# a missing mace-torch fails these tests (conftest.require_mace, through the fixtures): `make test`
# installs it, so it is a broken setup, never a skip

TOLERANCE = 1e-8  # relative, float64
# before any test imports mace (the example imports it lazily)
ENVIRONMENT_BEFORE = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
R_MAX = 4.0
INTERACTIONS = 2


def liquid(seed: int = 21) -> Atoms:
    """Periodic, 16 molecules (box ~7.8 A, smaller than the 8 A interaction range): H C O."""
    return hco_liquid(16, seed=seed)


def triclinic() -> Atoms:
    atoms = liquid(seed=22)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [-0.1, 0.2, 1.0]]), scale_atoms=True)
    atoms.wrap()
    return atoms


# the wrapper sees only pair vectors: slabs are exercised with the message-passing example
STRUCTURES = {"periodic": liquid, "triclinic": triclinic, "isolated": hco_cluster}


def relative(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max()) / max(float(np.abs(expected).max()), 1e-300)


@pytest.fixture(scope="module", params=["as_is", "layer_by_layer"])
def ours(request, mace_path, mace_exchange_path):
    """The wrapper calling MACE's forward, and the one running its blocks itself with the ghost
    exchange (the identity here: ASE has no ghosts)."""
    return AtomplugCalculator(mace_path if request.param == "as_is" else mace_exchange_path, skin=0.0)


@pytest.fixture(scope="module")
def reference(mace_model_path):
    return mace_example.mace_calculator(mace_model_path, compute_atomic_stresses=True)


def test_export_reads_the_model(mace_path, mace_exchange_path):
    assert not load_model(mace_path).capabilities.ghost_exchange
    assert load_model(mace_exchange_path).capabilities.ghost_exchange
    model = load_model(mace_path)
    assert model.capabilities.atomic_types == [1, 6, 8]
    assert model.capabilities.interaction_range == pytest.approx(INTERACTIONS * R_MAX)
    assert model.neighbor_requests("Angstrom") == [(R_MAX, True, True)]
    assert model.capabilities.outputs["energy"].per_atom
    assert model.capabilities.dtype == "float64"
    assert "MACE" in model.metadata.name.upper() and model.metadata.references


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_matches_mace_calculator(ours, reference, kind):
    atoms = STRUCTURES[kind]()
    periodic = bool(atoms.pbc.all())
    properties = ["energy", "forces", "energies"] + (["stress", "stresses"] if periodic else [])
    # one call each (a freshly loaded TorchScript model is slow on its first calls per shape)
    ours.calculate(atoms.copy(), properties, all_changes)
    reference.calculate(atoms.copy(), properties, all_changes)
    a, b = ours.results, reference.results
    assert np.abs(b["forces"]).max() > 1e-3  # the random model does interact
    assert relative(a["energy"], b["energy"]) < TOLERANCE
    assert relative(a["forces"], b["forces"]) < TOLERANCE
    assert relative(a["energies"], b["energies"]) < TOLERANCE
    if periodic:
        assert relative(a["stress"], b["stress"]) < TOLERANCE
        # per-atom virials: MACE's (from its edge forces) and ours (from the pair vectors)
        assert relative(a["stresses"], b["stresses"]) < TOLERANCE


def test_selected_atoms_sum_node_energies(ours):
    runner = ours.runner
    atoms = triclinic()
    full = runner.run([atoms], ["energy/per_atom"], use_cache=False)["energy/per_atom"][:, 0]
    selected = np.arange(0, len(atoms), 4)
    subset = runner.run([atoms], ["energy", "energy/per_atom"], selected_atoms=selected, use_cache=False)
    assert np.allclose(subset["energy/per_atom"][:, 0], full[selected], rtol=1e-13, atol=0.0)
    assert np.isclose(subset["energy"][0, 0], full[selected].sum(), rtol=1e-13, atol=0.0)


def test_import_leaves_torch_load_safe():
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for good when imported: the example restores it."""
    mace_example.import_mace()
    with mace_example.weights_only_load_allowed(), mace_example.contextlib.redirect_stdout(None):
        import mace.calculators  # noqa: F401  (what mace_calculator does)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == ENVIRONMENT_BEFORE
    with mace_example.weights_only_load_allowed():
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == ENVIRONMENT_BEFORE


def test_heads_and_unsupported_models():
    assert mace_example._choose_head(["Default"], None) == 0
    assert mace_example._choose_head(["pt_head", "default"], None) == 1
    assert mace_example._choose_head(["a", "b"], "b") == 1
    with pytest.raises(ValueError, match="none called 'default'"):
        mace_example._choose_head(["a", "b"], None)
    with pytest.raises(ValueError, match="is not in this MACE model"):
        mace_example._choose_head(["a", "b"], "c")
    with pytest.raises(ValueError, match="Linear is not supported"):
        mace_example.describe_mace(torch.nn.Linear(2, 2))


def test_not_a_model_file(tmp_path):
    state = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, str(state))
    with pytest.raises(ValueError, match="not a MACE module"):
        mace_example.load_mace_model(str(state))
    with pytest.raises(FileNotFoundError, match="no MACE model file"):
        mace_example.load_mace_model(str(tmp_path / "missing.model"))


def test_main_passes_its_arguments(monkeypatch, capsys, tmp_path):
    """The command line (exporting itself is what the tests above exercise)."""
    calls = []

    def fake_export(model, path, **options):
        calls.append((model, path, options))
        return {
            "class": "ScaleShiftMACE",
            "atomic_numbers": [1, 8],
            "r_max": 5.0,
            "num_interactions": 2,
            "interaction_range": 10.0,
            "head": options["head"] or "Default",
            "dtype": options["dtype"],
        }

    monkeypatch.setattr(mace_example, "export_mace", fake_export)
    mace_example.main(["user.model", str(tmp_path / "out.pt"), "--head", "pt_head", "--dtype", "float32"])
    assert calls == [
        ("user.model", str(tmp_path / "out.pt"), {"head": "pt_head", "dtype": "float32", "ghost_exchange": False})
    ]
    assert "interaction range 10.0" in capsys.readouterr().out

    def failing_export(model, path, **options):
        raise FileNotFoundError("no MACE model file 'user.model'")

    monkeypatch.setattr(mace_example, "export_mace", failing_export)
    with pytest.raises(SystemExit, match="no MACE model file"):
        mace_example.main(["user.model", str(tmp_path / "out.pt")])


def test_command_line_wraps_a_mace_file(mace_model_path, tmp_path):
    """`atomplug export-example mace --from FILE OUT`: the same archive as export_mace."""
    from atomplug.cli import main

    out = tmp_path / "from-cli.pt"
    assert main(["export-example", "mace", str(out), "--from", str(mace_model_path)]) == 0
    assert load_model(str(out)).capabilities.interaction_range == 8.0  # 2 interactions x r_max 4
