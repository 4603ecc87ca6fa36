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
