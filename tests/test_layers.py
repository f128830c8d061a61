"""The package's layers, as pipelines/README.md draws them: the core and the stages never import
orchestration/ or tools/, and nothing in pipelines imports jobs/ (the entrypoints sit over it)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines"
ON_TOP = ("pipelines.orchestration", "pipelines.tools")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _below_the_top(path: Path) -> bool:
    return not _module(path).startswith(ON_TOP)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in MODULES if _below_the_top(p)], ids=_module)
def test_the_core_and_the_stages_never_import_orchestration_or_tools(path):
    upward = sorted(n for n in _imports(path) if n.startswith(ON_TOP))
    assert upward == [], f"{_module(path)} imports {upward}: move what it needs down a layer"


@pytest.mark.parametrize("path", MODULES, ids=_module)
def test_the_library_never_imports_the_entrypoints(path):
    assert not [n for n in _imports(path) if n == "jobs" or n.startswith("jobs.")]


def test_pyproject_lists_every_package_and_sql_folder():
    import tomllib

    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {_module(p) for p in PACKAGE.parent.joinpath("jobs").glob("__init__.py")}
    code |= {_module(p) for p in PACKAGE.rglob("__init__.py")}
    sql = {"pipelines.sql"} | {"pipelines.sql." + p.name for p in (PACKAGE.parent / "sql").iterdir() if p.is_dir()
                               and p.name != "__pycache__"}
    assert set(setuptools["packages"]) == code | sql | {"pipelines.dags"}
    assert setuptools["package-dir"] == {"pipelines.sql": "sql", "pipelines.dags": "dags"}


def test_the_layers_are_what_the_module_map_lists():
    listed = set()
    for line in (PACKAGE / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            listed.add(line.split("`")[1].rstrip("/"))
    modules = {str(p.relative_to(PACKAGE)) for p in MODULES if p.name != "__init__.py"}
    folders = {str(p.parent.relative_to(PACKAGE)) for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    documented = {m for m in modules if m in listed or m.split("/")[0] in listed}
    assert modules - documented == set(), "every module has a row in pipelines/README.md"
    assert listed - modules - folders == set(), "every row is a module that exists"
