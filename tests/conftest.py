"""Shared fixtures: exported example models and reference structures."""

import pytest
from ase import Atoms
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon


@pytest.fixture(scope="session")
def lj_model_path(tmp_path_factory):
    from atomplug.examples.lj import export_lj

    path = tmp_path_factory.mktemp("models") / "lj.pt"
    export_lj(str(path), epsilon=AR_EPSILON, sigma=AR_SIGMA, cutoff=AR_CUTOFF, types=[18])
    return str(path)


def compile_once(model_path: str) -> str:
    """A compiled package (.pt2, next to the model) of a session's model: AOTInductor takes 15-40 s,
    so each model is compiled once per session."""
    from atomplug.core.compiled import compile_model

    return compile_model(model_path, log=lambda *_: None)


@pytest.fixture(scope="session")
def lj_package_path(lj_model_path):
    """lj_model_path compiled (atomplug compile): lj.pt2 next to lj.pt."""
    return compile_once(lj_model_path)


@pytest.fixture(scope="session")
def message_passing_package_path(message_passing_path):
    """message_passing_path compiled: message_passing.pt2 next to it."""
    return compile_once(message_passing_path)


@pytest.fixture(scope="session")
def coordination_path(tmp_path_factory):
    """The coordination example of the PLUMED tests (O-H, r0 3 A, d_max 8 A, output features)."""
    from atomplug.examples.coordination import export_coordination

    path = tmp_path_factory.mktemp("coordination") / "coordination.pt"
    export_coordination(str(path), r0=3.0, d_max=8.0, types_a=[8], types_b=[1])
    return str(path)


@pytest.fixture(scope="session")
def coordination_package_path(coordination_path):
    """coordination_path compiled: coordination.pt2 next to it."""
    return compile_once(coordination_path)


@pytest.fixture(scope="session")
def ani1x_path(tmp_path_factory):
    """The bundled ANI-1x ensemble, exported once per test session by our example code."""
    from atomplug.examples.ani1x import export_ani1x

    path = tmp_path_factory.mktemp("ani1x") / "ani1x.pt"
    export_ani1x(str(path))
    return str(path)


@pytest.fixture
def argon_box() -> Atoms:
    return displaced_triclinic_argon()


@pytest.fixture(scope="session")
def message_passing_path(tmp_path_factory):
    """The example message-passing model (H C O, 3 layers x 2.5 A = interaction range 7.5 A)."""
    from atomplug.examples.message_passing import export_message_passing

    path = tmp_path_factory.mktemp("message_passing") / "message_passing.pt"
    export_message_passing(str(path))
    return str(path)


@pytest.fixture(scope="session")
def message_passing_exchange_path(tmp_path_factory):
    """The same model (same weights) exchanging ghost features between its layers (ghost_exchange)."""
    from atomplug.examples.message_passing import export_message_passing

    path = tmp_path_factory.mktemp("message_passing") / "message_passing_exchange.pt"
    export_message_passing(str(path), ghost_exchange=True)
    return str(path)


MACE_MISSING = (
    "mace-torch is not installed: `make test` installs it (the 'mace' extra of pyproject.toml, "
    "with a constraint keeping the installed torch)"
)


def require_mace():
    """Fail the calling test or fixture, with the fix, when mace-torch (the 'mace' extra) is
    missing: `make test` installs it, so a missing MACE is a broken setup, never a skip."""
    import importlib.util

    if importlib.util.find_spec("mace") is None or importlib.util.find_spec("e3nn") is None:
        pytest.fail(MACE_MISSING, pytrace=False)


@pytest.fixture(scope="session")
def mace_model_path(tmp_path_factory):
    """A small MACE model file (`torch.save` of a ScaleShiftMACE with seeded random weights:
    H C O, r_max 4 A, 2 interactions, 16x0e+16x1o, float64), as a user's trained `.model`."""
    require_mace()
    import torch

    from atomplug.examples.mace import random_mace_model

    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(random_mace_model(), str(path))
    return str(path)


@pytest.fixture(scope="session")
def mace_path(mace_model_path, tmp_path_factory):
    """`mace_model_path` exported as an atomplug archive by examples/mace.py (float64)."""
    from atomplug.examples.mace import export_mace

    path = tmp_path_factory.mktemp("mace_export") / "mace.pt"
    export_mace(mace_model_path, str(path))
    return str(path)


@pytest.fixture(scope="session")
def mace_exchange_path(mace_model_path, tmp_path_factory):
    """The same MACE run layer by layer, exchanging ghost features (export_mace(ghost_exchange=True))."""
    from atomplug.examples.mace import export_mace

    path = tmp_path_factory.mktemp("mace_export") / "mace-exchange.pt"
    export_mace(mace_model_path, str(path), ghost_exchange=True)
    return str(path)
