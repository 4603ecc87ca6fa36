"""core.package_messages holds the words core says about compiled packages, which the C++ plugins
take from the header native_header generates: the table must give what core's CompiledProgram
refuses, word for word (the load refusals are compared engine by engine, in
tests/lammps/test_lammps_compiled.py and tests/plumed/test_plumed_compiled.py)."""

import pytest

from atomplug.core import load_model, native_header
from atomplug.core.package_messages import PACKAGE_MESSAGES, PACKAGE_REFUSALS, package_refusal
from atomplug.core.program import ProgramLayout

ENERGY = ProgramLayout(["energy"], [True], [1], "energy", 1)
FEATURES = ProgramLayout(["features"], [False], [2], "features", 1)
NOTHING = ProgramLayout(["features"], [False], [2], "", 1)


def call(outputs=("energy",), gradient="energy", forces=True, virial=False, atomic_virial=False, more=()):
    """The entry point's arguments that CompiledProgram.refusal reads (the others: None)."""
    arguments = [None] * 15 + list(more)
    arguments[7], arguments[9] = list(outputs), gradient
    arguments[10], arguments[11], arguments[12] = forces, virial, atomic_virial
    return arguments


CASES = {
    "non_conservative": (ENERGY, call(more=(True,)), {}),
    "ghost_exchange": (ENERGY, call(more=(False, None, None, object())), {}),
    "output": (
        ENERGY,
        call(outputs=("energy", "non_conservative_forces/per_atom")),
        {"name": "non_conservative_forces"},
    ),
    "gradient": (ENERGY, call(gradient="energy/alt"), {"compiled": "'energy'", "gradient_output": "energy/alt"}),
    "atomic_virial": (FEATURES, call(outputs=("features",), gradient="features", atomic_virial=True), {}),
}


@pytest.fixture(scope="module")
def program_class(lj_package_path):
    return type(load_model(lj_package_path).compiled)


@pytest.mark.parametrize("fault", list(CASES))
def test_the_table_words_every_refusal(program_class, fault):
    layout, arguments, values = CASES[fault]
    program = program_class(None, layout, "model.pt")
    assert program.refusal(arguments) == package_refusal(fault, "model.pt", **values)


def test_a_package_compiled_for_no_derivatives(program_class):
    program = program_class(None, NOTHING, "model.pt")
    expected = package_refusal("gradient", "model.pt", compiled="no output", gradient_output="features")
    assert program.refusal(call(outputs=("features",), gradient="features")) == expected
    assert program.refusal(call(outputs=("features",), gradient="features", forces=False)) is None


def test_the_plugins_get_the_tables():
    tables = native_header.generated_tables()
    for prefix, table in (("PACKAGE", PACKAGE_MESSAGES), ("PACKAGE_REFUSAL", PACKAGE_REFUSALS)):
        for key, text in table.items():
            assert f"constexpr const char *{prefix}_{key.upper()} = {native_header.cpp_string(text)};" in tables
