"""Fixtures for the i-PI tests: exported models, a process manager, reference structures."""

import pytest
from ipi_harness import Processes, remove_test_sockets


@pytest.fixture(scope="session")
def ani1x_path(tmp_path_factory):
    from atomplug.examples.ani1x import export_ani1x

    path = tmp_path_factory.mktemp("models") / "ani1x.pt"
    export_ani1x(str(path))
    return str(path)


@pytest.fixture
def procs(tmp_path):
    manager = Processes(tmp_path)
    yield manager
    manager.cleanup()
    remove_test_sockets()


@pytest.fixture(autouse=True)
def _clean_sockets():
    yield
    remove_test_sockets()
