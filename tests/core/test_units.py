"""Unit table and unit-expression parser, as plain Python and compiled with TorchScript.

Reference values are computed here from ase.units (CODATA), independently of the table.
"""

import math
from typing import Dict, List

import ase.units as au
import pytest
import torch

from atomplug.core.units import (
    DIMENSIONS_ENERGY,
    DIMENSIONS_LENGTH,
    ENGINE_UNITS,
    check_dimension,
    conversion_factor,
    conversion_factor_with_table,
    engine_units,
    parse_unit,
    unit_table,
)

TABLE = unit_table()

# SI base units expressed in ASE's own unit system, for building references.
_KG, _M, _S = au.kg, au.m, au.s


def _energy_in_joule(mass_kg: float, length_m: float, time_s: float) -> float:
    """mass * length^2 / time^2 converted through ASE's own unit system, in J."""
    in_ase = (mass_kg * _KG) * (length_m * _M) ** 2 / (time_s * _S) ** 2  # eV
    return in_ase / au.J


# (from, to, expected factor) with value_in_to = factor * value_in_from.
CODATA_CASES = [
    ("eV", "Hartree", 1.0 / au.Hartree),
    ("Hartree", "eV", au.Hartree),
    ("Ry", "eV", au.Ry),
    ("Bohr", "Angstrom", au.Bohr),
    ("Angstrom", "Bohr", 1.0 / au.Bohr),
    ("kcal/mol", "eV", au.kcal / au.mol),
    ("kJ/mol", "eV", au.kJ / au.mol),
    ("eV", "kcal/mol", au.mol / au.kcal),
    ("eV/Angstrom", "Hartree/Bohr", au.Bohr / au.Hartree),
    ("Hartree/Bohr", "eV/Angstrom", au.Hartree / au.Bohr),
    ("kcal/mol/Angstrom", "eV/Angstrom", au.kcal / au.mol),
    ("eV/Angstrom^3", "J/m^3", au.m**3 / au.J),
    ("eV/Angstrom^3", "GPa", 1.0 / au.GPa),
    ("eV/Angstrom^3", "bar", 1.0 / au.bar),
    ("nm", "Angstrom", au.nm / au.Angstrom),
    ("pm", "Angstrom", 1e-12 * au.m),
    ("meV", "eV", 1e-3),
    ("J", "eV", au.J),
    ("erg", "eV", 1e-7 * au.J),
    ("cal", "J", 4.184),
    ("amu", "kg", 1.0 / au.kg),
    ("dalton", "g", 1e3 / au.kg),
    ("fs", "ps", au.fs / (1e3 * au.fs)),
    ("picogram*micrometer^2/microsecond^2", "J", _energy_in_joule(1e-15, 1e-6, 1e-6)),
    ("attogram*nm^2/ns^2", "J", _energy_in_joule(1e-21, 1e-9, 1e-9)),
    ("kJ/mol", "attogram*nm^2/ns^2", (au.kJ / au.mol) / au.J / _energy_in_joule(1e-21, 1e-9, 1e-9)),
]

ROUND_TRIP_UNITS = [
    "eV",
    "meV",
    "Hartree",
    "Ry",
    "kcal/mol",
    "kJ/mol",
    "J",
    "erg",
    "picogram*micrometer^2/microsecond^2",
    "attogram*nm^2/ns^2",
]

MALFORMED = [
    ("eV/", "dangling operator '/' at the end"),
    ("eV*", "dangling operator '\\*' at the end"),
    ("*eV", "starts with operator '\\*'"),
    ("eV**2", "dangling operator '\\*' followed by '\\*'"),
    ("(eV", "unbalanced parenthesis"),
    ("eV)", "unbalanced parenthesis: '\\)' without a matching '\\('"),
    ("(eV))/(A", "unbalanced parenthesis"),
    ("()", "empty parentheses"),
    ("eV^0.5", "non-integer exponent '0.5'"),
    ("eV^1e2", "non-integer exponent '1e2'"),
    ("eV^", "'\\^' must be followed by an integer exponent"),
    ("eV^A", "'\\^' must be followed by an integer exponent, found 'A'"),
    ("eV^2^3", "repeated '\\^'"),
    ("eV^(2", "missing '\\)' after the exponent"),
    ("eV Angstrom", "missing operator between 'eV' and 'Angstrom'"),
    ("2eV", "missing operator between '2' and 'eV'"),
    ("-eV", "starts with operator '-'"),
    ("eV-A", "unexpected '-' after 'eV'"),
    ("eV%", "unexpected character '%' at position 2"),
    ("0*eV", "numeric factor '0' must be finite and non-zero"),
]


@pytest.fixture(scope="module")
def scripted():
    return {
        "parse_unit": torch.jit.script(parse_unit),
        "conversion": torch.jit.script(conversion_factor_with_table),
        "check_dimension": torch.jit.script(check_dimension),
    }


def _script_message(error: BaseException) -> str:
    """The ValueError message carried by a TorchScript error (its last line)."""
    last = str(error).strip().splitlines()[-1]
    marker = "ValueError: "
    assert marker in last, str(error)
    return last[last.index(marker) + len(marker) :]


def _python_message(function, *args) -> str:
    with pytest.raises(ValueError) as info:
        function(*args)
    return str(info.value)


# ---------------------------------------------------------------------------- table


def test_table_has_required_symbols_and_shape():
    required = [
        "ev",
        "mev",
        "hartree",
        "ha",
        "ry",
        "rydberg",
        "kcal",
        "kj",
        "j",
        "erg",
        "cal",
        "angstrom",
        "a",
        "ang",
        "bohr",
        "nm",
        "pm",
        "m",
        "cm",
        "um",
        "micrometer",
        "kg",
        "g",
        "picogram",
        "attogram",
        "amu",
        "u",
        "dalton",
        "s",
        "fs",
        "ps",
        "ns",
        "us",
        "microsecond",
        "mol",
    ]
    for symbol in required:
        assert symbol in TABLE, symbol
    for symbol, entry in TABLE.items():
        assert symbol == symbol.lower()
        assert isinstance(entry, list) and len(entry) == 5
        assert all(isinstance(x, float) for x in entry)
        assert entry[0] > 0.0 and math.isfinite(entry[0])
    assert TABLE["mol"] == [au._Nav, 0.0, 0.0, 0.0, 0.0]
    for alias, name in [
        ("ha", "hartree"),
        ("rydberg", "ry"),
        ("a", "angstrom"),
        ("ang", "angstrom"),
        ("u", "amu"),
        ("dalton", "amu"),
        ("micrometer", "um"),
        ("microsecond", "us"),
    ]:
        assert TABLE[alias] == TABLE[name]


def test_unit_table_returns_a_fresh_dict():
    table = unit_table()
    table["ev"][0] = 2.0
    assert unit_table()["ev"][0] == au._e


# ---------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("source, target, expected", CODATA_CASES)
def test_codata_conversions(source, target, expected, scripted):
    factor = conversion_factor(source, target)
    assert factor == pytest.approx(expected, rel=1e-12, abs=0.0)
    same = scripted["conversion"](source, target, TABLE)
    assert same == factor  # bit-identical
    assert conversion_factor_with_table(source, target, TABLE) == factor


def test_codata_case_count():
    assert len(CODATA_CASES) >= 12


@pytest.mark.parametrize("first", ROUND_TRIP_UNITS)
@pytest.mark.parametrize("second", ROUND_TRIP_UNITS)
def test_round_trip(first, second, scripted):
    there = conversion_factor(first, second)
    back = conversion_factor(second, first)
    assert there * back == pytest.approx(1.0, rel=1e-15, abs=0.0)
    assert scripted["conversion"](first, second, TABLE) == there
    assert scripted["conversion"](second, first, TABLE) == back


@pytest.mark.parametrize("unit", ROUND_TRIP_UNITS + ["Angstrom", "eV/Angstrom^3", "", "2.5*nm", "1e-3*eV"])
def test_identity_is_exactly_one(unit, scripted):
    assert conversion_factor(unit, unit) == 1.0
    assert scripted["conversion"](unit, unit, TABLE) == 1.0


def test_case_insensitive(scripted):
    reference = parse_unit("eV", TABLE)
    for spelling in ["ev", "EV", "Ev", "eV"]:
        assert parse_unit(spelling, TABLE) == reference
        assert scripted["parse_unit"](spelling, TABLE) == reference
    assert conversion_factor("KJ/MOL", "kj/mol") == 1.0
    assert conversion_factor("ANGSTROM", "a") == 1.0
    assert conversion_factor("HARTREE", "Ha") == 1.0


def test_numeric_literals(scripted):
    assert conversion_factor("2.5*nm", "Angstrom") == pytest.approx(25.0, rel=1e-15)
    assert conversion_factor("1e-3*eV", "meV") == pytest.approx(1.0, rel=1e-15)
    assert conversion_factor("1E+3*J", "kJ") == pytest.approx(1.0, rel=1e-15)
    assert conversion_factor(".5*Angstrom", "pm") == pytest.approx(50.0, rel=1e-15)
    assert conversion_factor("10^3*J", "kJ") == pytest.approx(1.0, rel=1e-15)
    for expression in ["2.5*nm", "1e-3*eV", "1E+3*J", ".5*Angstrom", "10^3*J", "0.1*nm"]:
        assert scripted["parse_unit"](expression, TABLE) == parse_unit(expression, TABLE)


def test_parentheses_and_negative_exponents(scripted):
    pairs = [
        ("eV*Angstrom^-3", "eV/Angstrom^3"),
        ("eV*Angstrom^(-3)", "eV/Angstrom^3"),
        ("(kcal/mol)/Angstrom", "kcal/mol/Angstrom"),
        ("(eV)/(Angstrom)^3", "eV/Angstrom^3"),
        ("eV/(Angstrom*Angstrom*Angstrom)", "eV/Angstrom^3"),
        ("((eV))", "eV"),
    ]
    for left, right in pairs:
        a = parse_unit(left, TABLE)
        b = parse_unit(right, TABLE)
        assert a[1:] == b[1:]
        assert a[0] == pytest.approx(b[0], rel=1e-15)
        assert scripted["parse_unit"](left, TABLE) == a
    # A negative power divides, so these two are bit-identical.
    assert parse_unit("eV*Angstrom^-3", TABLE) == parse_unit("eV/Angstrom^3", TABLE)
    assert parse_unit("(eV/Angstrom^3)^-1", TABLE)[1:] == [-1.0, 1.0, 2.0, 0.0]


def test_left_associative_division():
    # (J/kg)/s = m^2 s^-3; right association would give m^2 s^-1.
    assert parse_unit("J/kg/s", TABLE)[1:] == [0.0, 2.0, -3.0, 0.0]
    assert parse_unit("kJ/mol/nm", TABLE)[1:] == [1.0, 1.0, -2.0, 0.0]


def test_whitespace_and_empty(scripted):
    assert parse_unit("  kcal /  mol ", TABLE) == parse_unit("kcal/mol", TABLE)
    assert parse_unit("eV * Angstrom ^ -3", TABLE) == parse_unit("eV*Angstrom^-3", TABLE)
    for empty in ["", "   ", "\t"]:
        assert parse_unit(empty, TABLE) == [1.0, 0.0, 0.0, 0.0, 0.0]
        assert scripted["parse_unit"](empty, TABLE) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert conversion_factor("", "mol") == pytest.approx(1.0 / au._Nav, rel=1e-15)


# ---------------------------------------------------------------------------- errors


def test_unknown_symbol(scripted):
    with pytest.raises(ValueError, match="unknown unit 'furlong' in 'furlong/fs'; known units: .*angstrom"):
        parse_unit("furlong/fs", TABLE)
    message = _python_message(parse_unit, "furlong/fs", TABLE)
    for symbol in TABLE:
        assert symbol in message
    with pytest.raises(torch.jit.Error, match="unknown unit 'furlong'") as info:
        scripted["parse_unit"]("furlong/fs", TABLE)
    assert _script_message(info.value) == message
    with pytest.raises(ValueError, match="unknown unit 'kcl'"):
        conversion_factor("kcl/mol", "eV")


def test_dimension_mismatch(scripted):
    with pytest.raises(ValueError, match=r"cannot convert 'eV' \(energy\) to 'Angstrom' \(length\)"):
        conversion_factor("eV", "Angstrom")
    cases = [
        ("eV/Angstrom", "eV", r"cannot convert 'eV/Angstrom' \(force\) to 'eV' \(energy\)"),
        ("GPa", "fs", r"cannot convert 'GPa' \(pressure\) to 'fs' \(time\)"),
        ("amu", "mol", r"cannot convert 'amu' \(mass\) to 'mol' \(dimensionless\)"),
        ("eV*fs", "J", r"cannot convert 'eV\*fs' \(M\^1 L\^2 T\^-1\) to 'J' \(energy\)"),
        ("eV", "eV/Angstrom^3", r"to 'eV/Angstrom\^3' \(pressure\)"),
    ]
    for source, target, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            conversion_factor(source, target)
        with pytest.raises(torch.jit.Error, match=pattern) as info:
            scripted["conversion"](source, target, TABLE)
        assert _script_message(info.value) == _python_message(conversion_factor, source, target)


@pytest.mark.parametrize("expression, pattern", MALFORMED)
def test_malformed_expressions(expression, pattern, scripted):
    quoted = (
        "invalid unit expression '"
        + expression.replace("*", "\\*").replace("(", "\\(").replace(")", "\\)").replace("^", "\\^")
        + "': "
    )
    with pytest.raises(ValueError, match=quoted + ".*" + pattern):
        parse_unit(expression, TABLE)
    with pytest.raises(torch.jit.Error, match=pattern) as info:
        scripted["parse_unit"](expression, TABLE)
    assert _script_message(info.value) == _python_message(parse_unit, expression, TABLE)
    # Malformed units are rejected on either side of a conversion.
    with pytest.raises(ValueError, match=pattern):
        conversion_factor("eV", expression)


def test_check_dimension(scripted):
    check_dimension("kcal/mol", DIMENSIONS_ENERGY, "output 'energy'", TABLE)
    check_dimension("Bohr", DIMENSIONS_LENGTH, "length_unit", TABLE)
    with pytest.raises(ValueError, match=r"^unit 'eV/A' is not an energy unit \(it is force\)$"):
        check_dimension("eV/A", DIMENSIONS_ENERGY, "", TABLE)
    pattern = r"^length_unit: unit 'eV' is not a length unit \(it is energy\)$"
    with pytest.raises(ValueError, match=pattern):
        check_dimension("eV", DIMENSIONS_LENGTH, "length_unit", TABLE)
    scripted["check_dimension"]("Hartree", DIMENSIONS_ENERGY, "x", TABLE)
    with pytest.raises(torch.jit.Error) as info:
        scripted["check_dimension"]("eV", DIMENSIONS_LENGTH, "length_unit", TABLE)
    assert _script_message(info.value) == _python_message(
        check_dimension, "eV", DIMENSIONS_LENGTH, "length_unit", TABLE
    )
    with pytest.raises(ValueError, match="missing operator between 'eV' and '2'"):
        check_dimension("eV2", DIMENSIONS_ENERGY, "", TABLE)
    with pytest.raises(ValueError, match="unknown unit 'evv'"):
        check_dimension("evv", DIMENSIONS_ENERGY, "", TABLE)


# ---------------------------------------------------------------------------- TorchScript


def test_scripted_parse_is_bit_identical(scripted):
    expressions = (
        [case[0] for case in CODATA_CASES]
        + [case[1] for case in CODATA_CASES]
        + [
            "eV*Angstrom^-3",
            "(eV)/(A)^(-3)",
            "0.1*nm",
            "2.5*nm",
            "1e-3*eV",
            "",
            "J/kg/s",
        ]
        + [ENGINE_UNITS[engine][k] for engine in ENGINE_UNITS for k in range(2)]
    )
    for expression in expressions:
        assert scripted["parse_unit"](expression, TABLE) == parse_unit(expression, TABLE), expression


class _Archive(torch.nn.Module):
    """Stands in for an exported model: the table travels with the compiled parser."""

    def __init__(self):
        super().__init__()
        self.table: Dict[str, List[float]] = unit_table()

    @torch.jit.export
    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        return conversion_factor_with_table(from_unit, to_unit, self.table)

    def forward(self) -> float:
        return 1.0


def test_saved_archive_converts_without_python(tmp_path):
    path = str(tmp_path / "units.pt")
    torch.jit.save(torch.jit.script(_Archive()), path)
    loaded = torch.jit.load(path)
    for source, target, _ in CODATA_CASES:
        assert loaded.unit_conversion(source, target) == conversion_factor(source, target)
    with pytest.raises(torch.jit.Error, match=r"cannot convert 'eV' \(energy\) to 'nm' \(length\)"):
        loaded.unit_conversion("eV", "nm")


# ---------------------------------------------------------------------------- engines


def test_engine_units_table():
    assert ENGINE_UNITS["ase"] == ("eV", "Angstrom")
    assert ENGINE_UNITS["ipi"] == ("Hartree", "Bohr")
    assert ENGINE_UNITS["plumed"] == ("kJ/mol", "nm")
    assert ENGINE_UNITS["lammps:metal"] == ("eV", "Angstrom")
    assert ENGINE_UNITS["lammps:real"] == ("kcal/mol", "Angstrom")
    assert ENGINE_UNITS["lammps:electron"] == ("Hartree", "Bohr")
    assert ENGINE_UNITS["lammps:si"] == ("J", "m")
    assert ENGINE_UNITS["lammps:cgs"] == ("erg", "cm")
    assert ENGINE_UNITS["lammps:micro"][1] == "micrometer"
    assert ENGINE_UNITS["lammps:nano"][1] == "nm"
    assert conversion_factor(ENGINE_UNITS["lammps:micro"][0], "J") == pytest.approx(1e-15, rel=1e-15)
    assert conversion_factor(ENGINE_UNITS["lammps:nano"][0], "J") == pytest.approx(1e-21, rel=1e-15)
    assert "lammps:lj" not in ENGINE_UNITS
    for engine, (energy, length) in ENGINE_UNITS.items():
        check_dimension(energy, DIMENSIONS_ENERGY, engine, TABLE)
        check_dimension(length, DIMENSIONS_LENGTH, engine, TABLE)


def test_engine_units_lookup():
    for engine, units in ENGINE_UNITS.items():
        assert engine_units(engine) == units
    assert engine_units("LAMMPS:Real") == ("kcal/mol", "Angstrom")
    with pytest.raises(ValueError, match=r"LJ reduced units.*cannot be converted.*'units metal' or 'units real'"):
        engine_units("lammps:lj")
    with pytest.raises(ValueError, match=r"unknown engine 'gromacs'; known engines: ase, ipi, lammps:cgs"):
        engine_units("gromacs")


# ---------------------------------------------------------------------------- charge, dipole, velocity (issue 15)

# Independent references: CODATA through ase.units (_e, _c, _aut, _amu, _Nav, fs, s), and literal
# values of the definitions (1 statC = 1 C / (10 c), 1 D = 1e-18 statC cm).
C_LIGHT = 299792458.0  # m/s, exact
NEW_CODATA_CASES = [
    ("e", "C", au._e),
    ("C", "e", 1.0 / au._e),
    ("coulomb", "C", 1.0),
    ("picocoulomb", "e", 1e-12 / au._e),
    ("statcoulomb", "C", 1.0 / (10.0 * C_LIGHT)),
    ("esu", "e", 1.0 / (10.0 * C_LIGHT) / au._e),
    ("D", "statcoulomb*cm", 1e-18),
    ("debye", "C*m", 1e-21 / C_LIGHT),
    ("e*Angstrom", "D", au._e * 1e-10 / (1e-21 / C_LIGHT)),
    ("D", "e*Bohr", (1e-21 / C_LIGHT) / (au._e * au.Bohr * 1e-10)),
    ("aut", "s", au._aut),
    ("aut", "fs", au._aut * au.s / au.fs),
    ("asetime", "fs", 1.0 / au.fs),
    ("asetime", "s", 1.0 / au.s),
    ("Angstrom/asetime", "Angstrom/fs", au.fs),
    ("Angstrom/fs", "Angstrom/asetime", 1.0 / au.fs),
    ("Angstrom/ps", "Angstrom/fs", 1e-3),
    ("m/s", "Angstrom/fs", 1e-5),
    ("Bohr/aut", "Angstrom/fs", au.Bohr / (au._aut * au.s / au.fs)),
    ("Bohr/aut", "m/s", au.Bohr * 1e-10 / au._aut),
    ("nm/ps", "Angstrom/asetime", 10.0 * 1e-3 / au.fs),
    ("g/mol", "amu", 1e-3 * au.kg / au._Nav),
    ("amu", "g/mol", au._Nav / (1e-3 * au.kg)),
]


@pytest.mark.parametrize("source, target, expected", NEW_CODATA_CASES)
def test_charge_dipole_time_velocity_conversions(source, target, expected, scripted):
    assert conversion_factor(source, target) == pytest.approx(expected, rel=1e-13)
    assert scripted["conversion"](source, target, TABLE) == conversion_factor(source, target)


def test_known_values_of_the_new_units():
    """Textbook values (to their printed digits), a check on the references themselves."""
    assert conversion_factor("e*Angstrom", "D") == pytest.approx(4.80320471, rel=1e-8)
    # ASE's CODATA (2014 by default) and CODATA 2018 differ in the 10th digit of the atomic time
    assert conversion_factor("aut", "fs") == pytest.approx(0.02418884326585747, rel=1e-9)
    assert conversion_factor("asetime", "fs") == pytest.approx(10.1805057, rel=1e-7)
    assert conversion_factor("statcoulomb", "C") == pytest.approx(3.33564095198152e-10, rel=1e-13)
    assert conversion_factor("g/mol", "amu") == pytest.approx(1.0, rel=1e-9)


def test_new_symbols_in_the_table():
    for symbol in ("e", "c", "coulomb", "picocoulomb", "statcoulomb", "esu", "d", "debye", "aut", "asetime"):
        assert symbol in TABLE, symbol
    assert TABLE["e"] == [au._e, 0.0, 0.0, 0.0, 1.0]
    assert TABLE["c"] == TABLE["coulomb"] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert TABLE["esu"] == TABLE["statcoulomb"]
    assert TABLE["debye"] == TABLE["d"]
    assert TABLE["d"][1:] == [0.0, 1.0, 0.0, 1.0]
    assert TABLE["aut"][1:] == TABLE["asetime"][1:] == [0.0, 0.0, 1.0, 0.0]
    # the elementary charge and the electronvolt stay apart ("eV" is one symbol, "e*V" is not a unit)
    assert conversion_factor("eV", "J") == pytest.approx(au._e, rel=1e-15)
    assert conversion_factor("1e-3*e", "e") == pytest.approx(1e-3, rel=1e-15)
    assert conversion_factor("E", "e") == 1.0


def test_scripted_parser_agrees_on_the_new_symbols(scripted):
    from atomplug.core.units import ENGINE_QUANTITY_UNITS

    expressions = [case[0] for case in NEW_CODATA_CASES] + [case[1] for case in NEW_CODATA_CASES]
    expressions += ["C/s", "e^2/Angstrom", "D/Angstrom^3", "esu*cm", "1e-3*e", "statcoulomb^-1"]
    expressions += [unit for units in ENGINE_QUANTITY_UNITS.values() for unit in units.values()]
    for expression in expressions:
        assert scripted["parse_unit"](expression, TABLE) == parse_unit(expression, TABLE), expression


def test_dimension_names_of_the_new_quantities(scripted):
    from atomplug.core.units import QUANTITY_DIMENSIONS, dimension_name

    scripted_name = torch.jit.script(dimension_name)
    expected = {
        "e": "charge",
        "C": "charge",
        "statcoulomb": "charge",
        "D": "dipole",
        "e*Angstrom": "dipole",
        "Angstrom/fs": "velocity",
        "Bohr/aut": "velocity",
        "m/s": "velocity",
        "aut": "time",
        "asetime": "time",
        "amu": "mass",
        "C/s": "M^0 L^0 T^-1 Q^1".replace("M^0 L^0 ", ""),
    }
    for unit, name in expected.items():
        dims = parse_unit(unit, TABLE)[1:]
        assert dimension_name(dims) == name, unit
        assert scripted_name(dims) == name, unit
    for quantity in ("charge", "dipole", "velocity", "mass"):
        assert dimension_name(QUANTITY_DIMENSIONS[quantity]) == quantity
    message = _python_message(check_dimension, "e", QUANTITY_DIMENSIONS["mass"], "masses", TABLE)
    assert message == "masses: unit 'e' is not a mass unit (it is charge)"
    with pytest.raises(ValueError, match=r"cannot convert 'e\*Angstrom' \(dipole\) to 'e' \(charge\)"):
        conversion_factor("e*Angstrom", "e")
    with pytest.raises(torch.jit.Error, match=r"cannot convert 'Angstrom/fs' \(velocity\) to 'fs' \(time\)"):
        scripted["conversion"]("Angstrom/fs", "fs", TABLE)


def test_engine_quantity_units_table():
    from atomplug.core.units import ENGINE_QUANTITY_UNITS, QUANTITY_DIMENSIONS, engine_quantity_units

    assert set(ENGINE_QUANTITY_UNITS) == set(ENGINE_UNITS)
    for engine, units in ENGINE_QUANTITY_UNITS.items():
        assert set(units) == {"mass", "velocity", "charge"}, engine
        for quantity, unit in units.items():
            check_dimension(unit, QUANTITY_DIMENSIONS[quantity], engine, TABLE)
        assert engine_quantity_units(engine) == units
    # ASE: amu, Angstrom per ASE time unit, e; LAMMPS per its `units` documentation
    assert engine_quantity_units("ase") == {"mass": "amu", "velocity": "Angstrom/asetime", "charge": "e"}
    assert engine_quantity_units("LAMMPS:Metal") == {"mass": "g/mol", "velocity": "Angstrom/ps", "charge": "e"}
    assert engine_quantity_units("lammps:real")["velocity"] == "Angstrom/fs"
    assert engine_quantity_units("lammps:si") == {"mass": "kg", "velocity": "m/s", "charge": "C"}
    assert engine_quantity_units("lammps:cgs") == {"mass": "g", "velocity": "cm/s", "charge": "statcoulomb"}
    # LAMMPS' constants, not its docs: see test_lammps_units
    assert engine_quantity_units("lammps:electron")["velocity"] == "Bohr/fs"
    assert engine_quantity_units("lammps:micro")["charge"] == "picocoulomb"
    # a fresh dict each time: a caller's edit does not change the table
    engine_quantity_units("ase")["mass"] = "kg"
    assert engine_quantity_units("ase")["mass"] == "amu"
    with pytest.raises(ValueError, match="LJ reduced units"):
        engine_quantity_units("lammps:lj")
    with pytest.raises(ValueError, match="unknown engine 'gromacs'"):
        engine_quantity_units("gromacs")
