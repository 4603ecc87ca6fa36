"""Fixtures for the PLUMED tests: the compiled ATOMPLUG plugin and exported test models."""

import pytest


@pytest.fixture(scope="session")
def plugin():
    """The ATOMPLUG plugin, compiled on first use (~20 s) against hillclimber's PLUMED and torch."""
    from atomplug.plumed_cv import plugin_path

    return plugin_path()


@pytest.fixture(scope="session")
def plumed_models(tmp_path_factory):
    """Exported models: coordination (Angstrom), coordination in vacuum form, distance, two-property."""
    from plumed_testing import export_distance, export_two_coordinations

    from atomplug.examples.coordination import export_coordination

    directory = tmp_path_factory.mktemp("plumed-models")
    paths = {
        # PLUMED: SWITCH={RATIONAL R_0=0.3 D_MAX=0.8 NOSTRETCH}, lengths given in Angstrom here
        "coordination": str(directory / "coordination.pt"),
        # PLUMED: SWITCH={RATIONAL R_0=0.25 D_0=0.05 NN=8 MM=14 D_MAX=0.9 NOSTRETCH}, in nm
        "coordination_general": str(directory / "coordination-general.pt"),
        "distance": str(directory / "distance.pt"),
        "two_named": str(directory / "two-named.pt"),
        "two_unnamed": str(directory / "two-unnamed.pt"),
    }
    export_coordination(paths["coordination"], r0=3.0, d_max=8.0, types_a=[8], types_b=[1])
    export_coordination(
        paths["coordination_general"],
        r0=0.25,
        d0=0.05,
        nn=8,
        mm=14,
        d_max=0.9,
        types_a=[8],
        types_b=[1],
        length_unit="nm",
    )
    export_distance(paths["distance"])
    export_two_coordinations(paths["two_named"], ["c3", "c4"])
    export_two_coordinations(paths["two_unnamed"], ["r0=3", "r0=4"])
    return paths
