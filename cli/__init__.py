"""atomplug.cli: the whole-suite tools on top of the engines.

    atomplug info | eval | export-example | plugin-path | ipi-driver-path | crosscheck | doctor
    python -m atomplug.cli ...            (the same command)

`command` holds the `atomplug` command line, `crosscheck` runs one structure through every engine
and compares, `doctor` gathers every engine's installation checks. These tools may import every
engine and the examples; nothing below them (core, the engines) imports them.
"""

from .command import CommandError, build_parser, main

__all__ = ["CommandError", "build_parser", "main"]
