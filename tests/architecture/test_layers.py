"""The house's three floors, read from the imports of every Python file of the package.

core/ (bottom) imports no engine and nothing on top; an engine imports core only, never another
engine; the tools (cli/) and examples/ on top may import everything. No module imports, directly
or through others, a module that imports it back. `import_layers` reads every import form
(module and function level, relative, importlib strings); the synthetic trees below show that it
finds what it is meant to find, with the file and line.
"""

from __future__ import annotations

import os
import textwrap

from import_layers import Layers, check

ENGINES = ("ase_calculator", "ipi_driver", "lammps_plugin", "plumed_cv")
LAYERS = Layers(
    levels={"core": 0, **{engine: 1 for engine in ENGINES}, "cli": 2, "examples": 2},
    siblings={"cli": ("examples",), "examples": ("cli",)},
)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_import_of_the_package_respects_the_floors_and_no_module_imports_in_a_circle():
    problems = check(PACKAGE_ROOT, "atomplug", LAYERS)
    assert not problems, "\n".join(["import arrows that break the house (docs/architecture.md):"] + problems)


def test_every_floor_is_read():
    """The check reads the real folders: a renamed or missing folder would make it pass vacuously."""
    for folder in LAYERS.levels:
        assert os.path.exists(os.path.join(PACKAGE_ROOT, folder, "__init__.py")), folder


def _tree(root, files):
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text).lstrip("\n"))


def test_the_checker_names_file_and_line_of_upward_and_sideways_arrows_and_cycles(tmp_path):
    _tree(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "from .units import factor\n",
            "core/units.py": "factor = 1.0\n",
            "core/runner.py": """
            import os


            def engine_result():
                from ..lammps_plugin import single_point  # lazy, relative, upward
                return single_point
            """,
            "core/loader.py": """
            import importlib


            def tool():
                return importlib.import_module("pkg.cli.command")
            """,
            "core/left.py": "from . import right\n",
            "core/right.py": "# the cycle's second arrow, on line 3\n\nfrom pkg.core.left import thing\n",
            "lammps_plugin/__init__.py": "",
            "lammps_plugin/single_point.py": "from pkg.core import factor\nfrom pkg.ase_calculator.calculator import Calc\n",
            "ase_calculator/__init__.py": "",
            "ase_calculator/calculator.py": "class Calc: pass\n",
            "cli/__init__.py": "",
            "cli/command.py": "import pkg.lammps_plugin.single_point\nfrom pkg.examples import demo\n",
            "examples/__init__.py": "",
            "examples/demo.py": "from pkg.cli import command\n",
        },
    )
    problems = check(str(tmp_path), "pkg", LAYERS)
    text = "\n".join(problems)

    def reported(prefix, *words):
        hits = [p for p in problems if p.startswith(prefix) and all(w in p for w in words)]
        assert hits, f"expected {prefix} ... {words} among:\n{text}"

    reported(
        "core/runner.py:5:", "pkg.core.runner imports pkg.lammps_plugin.single_point", "core/ is below lammps_plugin/"
    )
    reported("core/loader.py:5:", "pkg.core.loader imports pkg.cli.command", "core/ is below cli/")
    reported("lammps_plugin/single_point.py:2:", "imports pkg.ase_calculator.calculator", "same floor")
    reported("core/left.py:1:", "import cycle between pkg.core.left, pkg.core.right", "core/right.py:3")
    reported("cli/command.py:2:", "import cycle between pkg.cli.command, pkg.examples.demo", "examples/demo.py:1")
    assert len(problems) == 5, text  # the allowed arrows (engine -> core, top -> engine, top <-> top) pass


def test_the_checker_passes_a_well_built_tree(tmp_path):
    _tree(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "from .units import factor\nfrom .runner import run\n",
            "core/units.py": "factor = 1.0\n",
            "core/runner.py": "from .units import factor\n\n\ndef run():\n    from . import units\n",
            "plumed_cv/__init__.py": "from .build import build\n",
            "plumed_cv/build.py": "import os\n\n\ndef build():\n    from atomplug_elsewhere import x\n",
            "plumed_cv/single_point.py": "from . import build\nfrom ..core import factor\n",
            "cli/__init__.py": "from .command import main\n",
            "cli/command.py": "import importlib\n\n\ndef main():\n    importlib.import_module('pkg.plumed_cv.single_point')\n",
            "examples/__init__.py": "",
            "examples/demo.py": "from pkg.cli import main\nfrom pkg.plumed_cv import build\n",
        },
    )
    assert check(str(tmp_path), "pkg", LAYERS) == []
