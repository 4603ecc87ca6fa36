"""Fixtures for the LAMMPS tests: the plugin built for this environment, and extra test models."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def plugin() -> str:
    """Build (or find up to date) the plugin for the installed torch and lammps; its path."""
    from atomplug.lammps_plugin.build import BuildError, build

    try:
        return build(verbose=False)
    except BuildError as error:
        pytest.fail(f"the LAMMPS plugin cannot be built here: {error}")


@pytest.fixture(scope="session")
def full_list_lj_path(tmp_path_factory) -> str:
    from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA

    from atomplug.examples.lj import export_lj

    path = tmp_path_factory.mktemp("models") / "lj-full.pt"
    export_lj(str(path), epsilon=AR_EPSILON, sigma=AR_SIGMA, cutoff=AR_CUTOFF, full_list=True)
    return str(path)
