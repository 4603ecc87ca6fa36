"""Physical units: one table, one parser, shared by Python and every engine.

A model declares its units as strings ("eV", "kcal/mol", "eV/Angstrom^3"); each engine
speaks its own ("Hartree"/"Bohr" for i-PI, "kJ/mol"/"nm" for PLUMED, the LAMMPS unit
styles). Converting between them needs a table of units and a parser for unit expressions.
Both live here exactly once: :func:`unit_table` builds the table from CODATA constants
(through ``ase.units``), and :func:`parse_unit` / :func:`conversion_factor_with_table` are
written in the TorchScript subset of Python. They run as plain Python, and the same source
is compiled with ``torch.jit.script`` into every exported archive together with the table,
so the C++ engines (LAMMPS, PLUMED) convert units by calling the archive and hold no unit
tables or parsers of their own.

Expressions: products ``*``, quotients ``/`` (left-associative: ``a/b/c`` is ``(a/b)/c``),
integer powers ``^`` (``^2``, ``^-1``, ``^(-3)``), parentheses, numeric literals
(``2.5*nm``, ``1e-3*eV``). Whitespace is ignored and symbols are case-insensitive, so
``MeV`` is the same as ``meV`` (milli-electronvolt). ``mol`` is the dimensionless Avogadro
number, so ``kcal/mol`` is an energy per particle. The empty expression is dimensionless 1.

Values are ``[value in SI, mass exponent, length exponent, time exponent, charge exponent]``
with SI base units kg, m, s and C.
"""

import math
from typing import Dict, List, Optional, Tuple

import ase.units

__all__ = [
    "DIMENSIONS_ENERGY",
    "DIMENSIONS_LENGTH",
    "ENGINE_UNITS",
    "ENGINE_QUANTITY_UNITS",
    "QUANTITY_DIMENSIONS",
    "check_dimension",
    "conversion_factor",
    "conversion_factor_with_table",
    "dimension_name",
    "engine_quantity_units",
    "engine_units",
    "parse_unit",
    "unit_table",
]

DIMENSIONS_ENERGY: List[float] = [1.0, 2.0, -2.0, 0.0]
DIMENSIONS_LENGTH: List[float] = [0.0, 1.0, 0.0, 0.0]
# [mass, length, time, charge] of the quantities a model may declare for its outputs and inputs
QUANTITY_DIMENSIONS: Dict[str, List[float]] = {
    "energy": DIMENSIONS_ENERGY,
    "length": DIMENSIONS_LENGTH,
    "force": [1.0, 1.0, -2.0, 0.0],
    "pressure": [1.0, -1.0, -2.0, 0.0],
    "mass": [1.0, 0.0, 0.0, 0.0],
    "velocity": [0.0, 1.0, -1.0, 0.0],
    "charge": [0.0, 0.0, 0.0, 1.0],
    "dipole": [0.0, 1.0, 0.0, 1.0],
}

# (energy unit, length unit) each engine works in. LAMMPS styles follow the `units` command
# documentation; `lammps:lj` is deliberately absent (reduced units have no physical scale).
ENGINE_UNITS: Dict[str, Tuple[str, str]] = {
    "ase": ("eV", "Angstrom"),
    "ipi": ("Hartree", "Bohr"),
    "plumed": ("kJ/mol", "nm"),
    "lammps:metal": ("eV", "Angstrom"),
    "lammps:real": ("kcal/mol", "Angstrom"),
    "lammps:electron": ("Hartree", "Bohr"),
    "lammps:si": ("J", "m"),
    "lammps:cgs": ("erg", "cm"),
    "lammps:micro": ("picogram*micrometer^2/microsecond^2", "micrometer"),
    "lammps:nano": ("attogram*nm^2/ns^2", "nm"),
}

# The units of mass, velocity and charge each engine gives and takes (model inputs such as
# masses and charges arrive in these; outputs of these quantities are returned in them). ASE's
# velocities are in Angstrom per ASE time unit (Angstrom*sqrt(amu/eV), about 10.18 fs); i-PI's
# driver reads masses and charges from the structure file (ASE's amu and e); PLUMED's defaults
# are amu and e; LAMMPS styles follow the `units` command documentation, except `electron`
# velocities: its page says Bohr per atomic time unit, but LAMMPS' constants for that style
# (mvv2e = 1.06657236 Hartree per amu Bohr^2/fs^2, femtosecond = 1) are for Bohr/fs.
ENGINE_QUANTITY_UNITS: Dict[str, Dict[str, str]] = {
    "ase": {"mass": "amu", "velocity": "Angstrom/asetime", "charge": "e"},
    "ipi": {"mass": "amu", "velocity": "Bohr/aut", "charge": "e"},
    "plumed": {"mass": "amu", "velocity": "nm/ps", "charge": "e"},
    "lammps:metal": {"mass": "g/mol", "velocity": "Angstrom/ps", "charge": "e"},
    "lammps:real": {"mass": "g/mol", "velocity": "Angstrom/fs", "charge": "e"},
    "lammps:electron": {"mass": "amu", "velocity": "Bohr/fs", "charge": "e"},
    "lammps:si": {"mass": "kg", "velocity": "m/s", "charge": "C"},
    "lammps:cgs": {"mass": "g", "velocity": "cm/s", "charge": "statcoulomb"},
    "lammps:micro": {"mass": "picogram", "velocity": "micrometer/microsecond", "charge": "picocoulomb"},
    "lammps:nano": {"mass": "attogram", "velocity": "nm/ns", "charge": "e"},
}


def unit_table() -> Dict[str, List[float]]:
    """Map lower-case unit symbol -> [value in SI, dim_mass, dim_length, dim_time].

    Physical constants come from CODATA through ``ase.units``; only exact definitions
    (SI prefixes, 1 cal = 4.184 J, 1 atm = 101325 Pa) are written out. Aliases are extra keys.
    """
    electronvolt = ase.units._e  # J per eV
    angstrom = 1e-10  # m, definition
    energy = [1.0, 2.0, -2.0, 0.0]
    length = [0.0, 1.0, 0.0, 0.0]
    mass = [1.0, 0.0, 0.0, 0.0]
    time = [0.0, 0.0, 1.0, 0.0]
    pressure = [1.0, -1.0, -2.0, 0.0]
    charge = [0.0, 0.0, 0.0, 1.0]
    dipole = [0.0, 1.0, 0.0, 1.0]
    none = [0.0, 0.0, 0.0, 0.0]
    # ASE's unit of time: Angstrom * sqrt(amu / eV), about 10.18 fs
    ase_time = angstrom * math.sqrt(ase.units._amu / electronvolt)

    entries: List[Tuple[List[str], float, List[float]]] = [
        # energy
        (["j", "joule"], 1.0, energy),
        (["kj"], 1e3, energy),
        (["cal"], 4.184, energy),
        (["kcal"], 4.184e3, energy),
        (["erg"], 1e-7, energy),
        (["ev"], electronvolt, energy),
        (["mev"], 1e-3 * electronvolt, energy),
        (["hartree", "ha"], ase.units.Hartree * electronvolt, energy),
        (["ry", "rydberg"], ase.units.Ry * electronvolt, energy),
        # length
        (["m", "meter"], 1.0, length),
        (["cm"], 1e-2, length),
        (["um", "micrometer"], 1e-6, length),
        (["nm"], 1e-9, length),
        (["pm"], 1e-12, length),
        (["angstrom", "a", "ang"], angstrom, length),
        (["bohr"], ase.units.Bohr * angstrom, length),
        # mass
        (["kg"], 1.0, mass),
        (["g"], 1e-3, mass),
        (["picogram"], 1e-15, mass),
        (["attogram"], 1e-21, mass),
        (["amu", "u", "dalton"], ase.units._amu, mass),
        # time
        (["s", "second"], 1.0, time),
        (["us", "microsecond"], 1e-6, time),
        (["ns"], 1e-9, time),
        (["ps"], 1e-12, time),
        (["fs"], 1e-15, time),
        (["aut"], ase.units._aut, time),  # atomic unit of time, hbar / Hartree
        (["asetime"], ase_time, time),
        # charge: e the elementary charge, statcoulomb (esu) = 0.1 C / c
        (["e"], electronvolt, charge),
        (["c", "coulomb"], 1.0, charge),
        (["picocoulomb"], 1e-12, charge),
        (["statcoulomb", "esu"], 0.1 / ase.units._c, charge),
        # dipole: D the Debye, 1e-21 C m^2/s / c
        (["d", "debye"], 1e-21 / ase.units._c, dipole),
        # pressure
        (["pa"], 1.0, pressure),
        (["gpa"], 1e9, pressure),
        (["bar"], 1e5, pressure),
        (["atm"], 101325.0, pressure),
        # count: Avogadro's number, so kcal/mol is kcal per particle
        (["mol"], ase.units._Nav, none),
    ]
    table: Dict[str, List[float]] = {}
    for names, value, dims in entries:
        for name in names:
            if name in table:
                raise RuntimeError(f"unit table: duplicate symbol {name!r}")
            table[name] = [float(value)] + [float(d) for d in dims]
    return table


def dimension_name(dims: List[float]) -> str:
    """Name of a dimension [mass, length, time, charge] ("energy", "force", ...) or its
    M^a L^b T^c Q^d form."""
    m = dims[0]
    ell = dims[1]  # the power of length
    t = dims[2]
    q = dims[3]
    if m == 0.0 and ell == 0.0 and t == 0.0 and q == 0.0:
        return "dimensionless"
    if q == 0.0:
        if m == 1.0 and ell == 2.0 and t == -2.0:
            return "energy"
        if m == 0.0 and ell == 1.0 and t == 0.0:
            return "length"
        if m == 0.0 and ell == 0.0 and t == 1.0:
            return "time"
        if m == 1.0 and ell == 0.0 and t == 0.0:
            return "mass"
        if m == 1.0 and ell == 1.0 and t == -2.0:
            return "force"
        if m == 1.0 and ell == -1.0 and t == -2.0:
            return "pressure"
        if m == 0.0 and ell == 1.0 and t == -1.0:
            return "velocity"
    if m == 0.0 and ell == 0.0 and t == 0.0 and q == 1.0:
        return "charge"
    if m == 0.0 and ell == 1.0 and t == 0.0 and q == 1.0:
        return "dipole"
    parts: List[str] = []
    symbols = ["M", "L", "T", "Q"]
    for k in range(4):
        if dims[k] != 0.0:
            parts.append(f"{symbols[k]}^{int(dims[k])}")
    return " ".join(parts)


def _tokenize(expression: str) -> Tuple[List[str], List[str], List[int]]:
    """Split into tokens: kinds ("num", "sym", "op"), texts and start positions."""
    # Only these ASCII characters may appear. Python's str.isdigit()/isalpha() accept other
    # scripts ("²", "٣"), and TorchScript indexes strings by UTF-8 byte: explicit ASCII sets make
    # the Python and the compiled parser agree on every input and keep messages valid UTF-8.
    # (Locals, not module constants: TorchScript cannot read global strings.)
    digits_set = "0123456789"
    letters_set = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
    spaces_set = " \t\n"  # and carriage return as ord 13: a "\r" literal does not survive torch.jit.save
    kinds: List[str] = []
    texts: List[str] = []
    starts: List[int] = []
    n = len(expression)
    i = 0
    while i < n:
        c = expression[i]
        if c in spaces_set or ord(c) == 13:
            i += 1
        elif c in digits_set or (c == "." and i + 1 < n and expression[i + 1] in digits_set):
            start = i
            while i < n and expression[i] in digits_set:
                i += 1
            if i < n and expression[i] == ".":
                i += 1
                while i < n and expression[i] in digits_set:
                    i += 1
            # An exponent only when digits follow, so "2eV" stays number "2" then symbol "eV".
            if i < n and expression[i] in ["e", "E"]:
                j = i + 1
                if j < n and expression[j] in ["+", "-"]:
                    j += 1
                if j < n and expression[j] in digits_set:
                    i = j
                    while i < n and expression[i] in digits_set:
                        i += 1
            kinds.append("num")
            texts.append(expression[start:i])
            starts.append(start)
        elif c in letters_set:
            start = i
            while i < n and expression[i] in letters_set:
                i += 1
            kinds.append("sym")
            texts.append(expression[start:i])
            starts.append(start)
        elif c in ["*", "/", "^", "(", ")", "-", "+"]:
            kinds.append("op")
            texts.append(c)
            starts.append(i)
            i += 1
        elif c in "!\"#$%&',.:;<=>?@[\\]`{|}~":
            raise ValueError(f"invalid unit expression '{expression}': unexpected character '{c}' at position {i}")
        else:  # a control or non-ASCII character (in TorchScript, one byte of it: not quoted)
            raise ValueError(
                f"invalid unit expression '{expression}': unexpected control or non-ASCII character at "
                f"position {i} (unit expressions are plain ASCII, e.g. 'eV/Angstrom^3')"
            )
    return kinds, texts, starts


def _describe(kinds: List[str], texts: List[str], index: int) -> str:
    if index >= len(kinds):
        return "the end of the expression"
    return f"'{texts[index]}'"


def _read_exponent(expression: str, kinds: List[str], texts: List[str], index: int) -> Tuple[int, int]:
    """If token `index` is '^', read the integer exponent after it: (exponent, next index)."""
    n = len(kinds)
    if index >= n or texts[index] != "^" or kinds[index] != "op":
        return 1, index
    prefix = f"invalid unit expression '{expression}': "
    max_exponent = 64  # powers are computed by repeated multiplication
    i = index + 1
    parenthesized = False
    if i < n and kinds[i] == "op" and texts[i] == "(":
        parenthesized = True
        i += 1
    sign = 1
    if i < n and kinds[i] == "op" and texts[i] in ["-", "+"]:
        if texts[i] == "-":
            sign = -1
        i += 1
    if i >= n or kinds[i] != "num":
        raise ValueError(f"{prefix}'^' must be followed by an integer exponent, found {_describe(kinds, texts, i)}")
    digits = texts[i]
    if not digits.isdigit():
        raise ValueError(f"{prefix}non-integer exponent '{digits}' (only integer powers are allowed)")
    significant = digits.lstrip("0")  # "^0000002" is 2; bound the length before int()
    value = int(digits) if len(significant) <= 6 else max_exponent + 1
    if value > max_exponent:
        raise ValueError(f"{prefix}exponent '{digits}' is too large (at most {max_exponent})")
    i += 1
    if i < n and kinds[i] == "op" and texts[i] == "^":
        raise ValueError(f"{prefix}repeated '^': write a single integer power, e.g. 'x^6' instead of 'x^2^3'")
    if parenthesized:
        if i >= n or kinds[i] != "op" or texts[i] != ")":
            raise ValueError(f"{prefix}unbalanced parenthesis: missing ')' after the exponent")
        i += 1
    return sign * value, i


def _number(text: str, prefix: str) -> float:
    """The value of a numeric literal ("2.5", "1e-3"), which must lie between 1e-300 and 1e300.

    The decimal magnitude is read from the digits before anything is converted: Python's float()
    and TorchScript's (C++ strtod) disagree on overflow and subnormal numbers, and an exponent of
    thousands of digits must not reach int() at all.
    """
    mantissa = text
    exponent = 0
    cut = -1
    for k in range(len(text)):
        if text[k] in ["e", "E"]:
            cut = k
    if cut >= 0:
        mantissa = text[:cut]
        exponent_text = text[cut + 1 :]
        sign = 1
        if exponent_text.startswith("-"):
            sign = -1
            exponent_text = exponent_text[1:]
        elif exponent_text.startswith("+"):
            exponent_text = exponent_text[1:]
        exponent_text = exponent_text.lstrip("0")
        if len(exponent_text) > 5:
            exponent_text = "99999"
        if exponent_text != "":
            exponent = sign * int(exponent_text)
    point = mantissa.find(".")
    whole = mantissa if point < 0 else mantissa[:point]
    fraction = "" if point < 0 else mantissa[point + 1 :]
    whole = whole.lstrip("0")
    magnitude = 0
    if whole != "":
        magnitude = len(whole) - 1 + exponent
    else:
        significant = fraction.lstrip("0")
        if significant == "":
            raise ValueError(f"{prefix}numeric factor '{text}' must be finite and non-zero")
        magnitude = exponent - (len(fraction) - len(significant) + 1)
    if magnitude > 299 or magnitude < -299:
        raise ValueError(f"{prefix}numeric factor '{text}' is out of range (1e-299 to 1e299)")
    return float(text)


def _apply(accumulator: List[float], operator: str, operand: List[float], exponent: int, prefix: str) -> List[float]:
    """accumulator (operator) operand^exponent, exponent applied by repeated multiplication.

    A negative power divides instead of multiplying by a reciprocal, so 'a*b^-1' and 'a/b'
    give bit-identical values. Every intermediate value must stay within 1e-300..1e300: beyond,
    it would underflow to zero (a division by zero) or lose digits as a subnormal number.
    """
    count = exponent if exponent >= 0 else -exponent
    power = 1.0
    for _ in range(count):
        power = power * operand[0]
    divide = (operator == "/") != (exponent < 0)
    if not (power >= 1e-300 and power <= 1e300):
        raise ValueError(
            f"{prefix}a power of {operand[0]} is out of range (units and their "
            "powers must lie between 1e-300 and 1e300 SI units)"
        )
    value = accumulator[0] / power if divide else accumulator[0] * power
    if not (value >= 1e-300 and value <= 1e300):
        raise ValueError(
            f"{prefix}its value goes out of range (units and their products must lie between 1e-300 and 1e300 SI units)"
        )
    scale = float(-exponent) if operator == "/" else float(exponent)
    return [
        value,
        accumulator[1] + scale * operand[1],
        accumulator[2] + scale * operand[2],
        accumulator[3] + scale * operand[3],
        accumulator[4] + scale * operand[4],
    ]


def parse_unit(expression: str, table: Dict[str, List[float]]) -> List[float]:
    """Parse a unit expression into [value in SI, dim_mass, dim_length, dim_time, dim_charge].

    Raises ValueError for unknown symbols (naming them and listing the known ones) and for
    malformed expressions (quoting the expression and saying what is wrong).
    """
    prefix = f"invalid unit expression '{expression}': "
    tokens = _tokenize(expression)
    kinds = tokens[0]
    texts = tokens[1]
    n = len(kinds)
    accumulator: List[float] = [1.0, 0.0, 0.0, 0.0, 0.0]
    operator = "*"
    saved_accumulators: List[List[float]] = []
    saved_operators: List[str] = []
    expect_operand = True
    i = 0
    while i < n:
        kind = kinds[i]
        text = texts[i]
        if expect_operand:
            if kind == "op" and text == "(":
                saved_accumulators.append(accumulator)
                saved_operators.append(operator)
                accumulator = [1.0, 0.0, 0.0, 0.0, 0.0]
                operator = "*"
                i += 1
                continue
            operand: List[float] = [1.0, 0.0, 0.0, 0.0, 0.0]
            if kind == "num":
                operand = [_number(text, prefix), 0.0, 0.0, 0.0, 0.0]
            elif kind == "sym":
                symbol = text.lower()
                if symbol not in table:
                    known = list(table.keys())
                    known.sort()
                    raise ValueError(f"unknown unit '{text}' in '{expression}'; known units: {', '.join(known)}")
                operand = table[symbol]
            elif text == ")":
                if i == 0:
                    raise ValueError(f"{prefix}unbalanced parenthesis: ')' without a matching '('")
                if texts[i - 1] == "(" and kinds[i - 1] == "op":
                    raise ValueError(f"{prefix}empty parentheses '()'")
                raise ValueError(f"{prefix}dangling operator '{texts[i - 1]}' before ')'")
            elif i == 0:
                raise ValueError(f"{prefix}expression starts with operator '{text}'")
            elif kinds[i - 1] == "op" and texts[i - 1] != "(":
                raise ValueError(f"{prefix}dangling operator '{texts[i - 1]}' followed by '{text}'")
            else:
                raise ValueError(f"{prefix}unexpected operator '{text}' after '('")
            power = _read_exponent(expression, kinds, texts, i + 1)
            accumulator = _apply(accumulator, operator, operand, power[0], prefix)
            i = power[1]
            expect_operand = False
        else:
            if kind == "op" and text in ["*", "/"]:
                operator = text
                expect_operand = True
                i += 1
            elif kind == "op" and text == ")":
                if len(saved_accumulators) == 0:
                    raise ValueError(f"{prefix}unbalanced parenthesis: ')' without a matching '('")
                group = accumulator
                accumulator = saved_accumulators.pop()
                operator = saved_operators.pop()
                power = _read_exponent(expression, kinds, texts, i + 1)
                accumulator = _apply(accumulator, operator, group, power[0], prefix)
                i = power[1]
            elif kind == "op" and text == "^":
                raise ValueError(f"{prefix}'^' must follow a unit, a number or ')' (write a single power)")
            elif kind == "op":
                raise ValueError(
                    f"{prefix}unexpected '{text}' after {_describe(kinds, texts, i - 1)} "
                    "(signs are only allowed in exponents, e.g. 'nm^-1')"
                )
            else:
                raise ValueError(f"{prefix}missing operator between '{texts[i - 1]}' and '{text}' (use '*' or '/')")
    if n > 0 and expect_operand:
        last = texts[n - 1]
        if last == "(":
            raise ValueError(f"{prefix}unbalanced parenthesis: '(' is never closed")
        raise ValueError(f"{prefix}dangling operator '{last}' at the end")
    if len(saved_accumulators) > 0:
        raise ValueError(f"{prefix}unbalanced parenthesis: {len(saved_accumulators)} '(' never closed")
    if not (accumulator[0] >= 1e-300 and accumulator[0] <= 1e300):
        raise ValueError(
            f"{prefix}its value {accumulator[0]} is out of range (a unit must lie between 1e-300 and 1e300 SI units)"
        )
    return accumulator


def conversion_factor_with_table(from_unit: str, to_unit: str, table: Dict[str, List[float]]) -> float:
    """Factor f with value_in_to_unit = f * value_in_from_unit, using `table`.

    Raises ValueError when the two units have different dimensions, naming both.
    """
    source = parse_unit(from_unit, table)
    target = parse_unit(to_unit, table)
    if source[1] != target[1] or source[2] != target[2] or source[3] != target[3] or source[4] != target[4]:
        raise ValueError(
            f"cannot convert '{from_unit}' ({dimension_name(source[1:])}) to '{to_unit}' ({dimension_name(target[1:])})"
        )
    if from_unit == to_unit:
        return 1.0
    factor = source[0] / target[0]
    if factor == 0.0 or not math.isfinite(factor):
        raise ValueError(
            f"the conversion factor from '{from_unit}' to '{to_unit}' ({factor}) is not a finite, non-zero number: "
            "the two units are too far apart in scale"
        )
    return factor


def check_dimension(expression: str, expected: List[float], what: str, table: Dict[str, List[float]]) -> None:
    """Raise ValueError unless `expression` has dimensions `expected` ([mass, length, time, charge])."""
    dims = parse_unit(expression, table)[1:]
    if dims[0] == expected[0] and dims[1] == expected[1] and dims[2] == expected[2] and dims[3] == expected[3]:
        return
    name = dimension_name(expected)
    first = name[0]
    article = "an " if first in ["a", "e", "i", "o", "u"] else "a "
    lead = "" if what == "" else f"{what}: "
    raise ValueError(f"{lead}unit '{expression}' is not {article}{name} unit (it is {dimension_name(dims)})")


_TABLE: Optional[Dict[str, List[float]]] = None


def _cached_table() -> Dict[str, List[float]]:
    global _TABLE
    if _TABLE is None:
        _TABLE = unit_table()
    return _TABLE


def conversion_factor(from_unit: str, to_unit: str) -> float:
    """Factor f with value_in_to_unit = f * value_in_from_unit (module-level cached table)."""
    return conversion_factor_with_table(from_unit, to_unit, _cached_table())


def engine_quantity_units(engine: str) -> Dict[str, str]:
    """{"mass", "velocity", "charge": unit} of an engine: 'ase', 'ipi', 'plumed' or 'lammps:<style>'."""
    engine_units(engine)  # the same checks and messages for unknown engines and LJ units
    return dict(ENGINE_QUANTITY_UNITS[engine.strip().lower()])


def engine_units(engine: str) -> Tuple[str, str]:
    """(energy unit, length unit) of an engine: 'ase', 'ipi', 'plumed' or 'lammps:<style>'."""
    key = engine.strip().lower()
    if key in ENGINE_UNITS:
        return ENGINE_UNITS[key]
    if key == "lammps:lj":
        raise ValueError(
            "LAMMPS 'units lj' are LJ reduced units with no physical scale, so model outputs "
            "cannot be converted to them; use 'units metal' or 'units real' instead"
        )
    raise ValueError(f"unknown engine {engine!r}; known engines: {', '.join(sorted(ENGINE_UNITS))}")
