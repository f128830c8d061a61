"""The package's layers, as pipelines/README.md draws them, checked for every module of the library,
the entrypoints and the DAG files, with no exceptions:

- the core (the modules at the top of ``lookalike`` and ``resources/``) imports only the core;
- the stages, in the order a night runs them (``STAGES``), import the core and earlier stages, but
  never another stage's ``stage`` module: a stage's I/O for a ds is not a library;
- the compositions (``COMPOSED``: the intraday hour and the experiments, which run other stages'
  code) import the core and the stages;
- ``orchestration`` imports everything below it, ``tools`` (the command line) everything below it;
- ``jobs/`` and ``dags/`` import only ``orchestration`` (and the core, for the DAGs' constants);
- nothing imports ``jobs``, and no import cycle exists anywhere (lazy imports inside functions
  count as imports)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"lookalike": ROOT / "pipelines", "lookalike.jobs": ROOT / "jobs", "lookalike.dags": ROOT / "dags"}
STAGES = ("sample", "extract", "train", "embed", "evaluate", "neighbors", "publish", "online", "userrec")
COMPOSED = ("intraday", "experiments")
ABOVE = ("orchestration", "tools", "jobs", "dags")
RANK = {"core": 0, **{s: 1 + i for i, s in enumerate(STAGES)}, **{c: 1 + len(STAGES) + i for i, c in enumerate(COMPOSED)},
        **{a: 1 + len(STAGES) + len(COMPOSED) + i for i, a in enumerate(ABOVE)}}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            name = ".".join((package, *path.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an imported name is (``lookalike.x.y`` may be a module or a name in ``lookalike.x``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in it (other modules excluded)."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import (write the package's name)")
    return {m for n in names if n == "lookalike" or n.startswith("lookalike.")
            if (m := _resolve(n)) and m != module}


def _package(module: str) -> str:
    """``core`` (a top-level module, or ``resources``), a stage, a composition, or a layer above."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "core"


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_package_of_the_library_has_a_layer():
    folders = {p.parent.name for p in (ROOT / "pipelines").glob("*/__init__.py")}
    assert folders - set(RANK) == {"resources"}, "add the new package to STAGES, COMPOSED or ABOVE"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_own_package_and_the_layers_below(module):
    own = _package(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        other = _package(target)
        if other == own:
            continue
        if other in ("jobs", "dags") or RANK[other] > RANK[own]:
            wrong.append(f"{target} (a layer above, or beside)")
        elif RANK[other] == RANK[own]:
            wrong.append(target)
        elif own in STAGES and other in STAGES and target.endswith(".stage"):
            wrong.append(f"{target} (another stage's I/O: move what is shared into the core)")
        elif own in ("jobs", "dags") and other != "orchestration" and (own == "jobs" or other != "core"):
            wrong.append(f"{target} (entrypoints and DAGs are wiring over orchestration)")
    assert wrong == [], f"{module} ({own}) imports {wrong}"


def test_no_import_cycle_anywhere():
    """Tarjan's strongly connected components of the module graph: every one is a single module."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_layer_check_sees_a_stage_importing_a_later_stage_and_a_cycle(monkeypatch):
    """The rules above fail on what they are meant to catch (so a pass means something)."""
    monkeypatch.setitem(GRAPH, "lookalike.extract.validate", GRAPH["lookalike.extract.validate"] | {"lookalike.neighbors.search"})
    with pytest.raises(AssertionError, match="neighbors.search"):
        test_each_module_imports_only_its_own_package_and_the_layers_below("lookalike.extract.validate")
    monkeypatch.setitem(GRAPH, "lookalike.errors", GRAPH["lookalike.errors"] | {"lookalike.storage"})
    with pytest.raises(AssertionError):
        test_no_import_cycle_anywhere()


def test_pyproject_lists_every_package_and_sql_folder():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {m for m, p in MODULES.items() if p.name == "__init__.py"} | {"lookalike.dags"}
    sql = {"lookalike.sql"} | {"lookalike.sql." + p.name for p in (ROOT / "sql").iterdir() if p.is_dir()
                               and p.name != "__pycache__"}
    assert set(setuptools["packages"]) == code | sql
    assert setuptools["package-dir"] == {"lookalike": "pipelines", "lookalike.jobs": "jobs", "lookalike.sql": "sql",
                                         "lookalike.dags": "dags"}


def test_the_layers_are_what_the_module_map_lists():
    package = ROOT / "pipelines"
    listed = set()
    for line in (package / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            listed.add(line.split("`")[1].rstrip("/"))
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    folders = {str(p.parent.relative_to(package)) for p in package.rglob("__init__.py") if p.parent != package}
    documented = {m for m in modules if m in listed or m.split("/")[0] in listed}
    assert modules - documented == set(), "every module has a row in pipelines/README.md"
    assert listed - modules - folders == set(), "every row is a module that exists"
