"""The documentation says what the code does: the configuration page is written from
``pipelines/config.py`` and must match it, every command the docs name is the CLI's own, the
README stays a front page, and every link lands."""
import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from lookalike.tools import configdoc
from lookalike.config import Config
from lookalike.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "pipelines" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.default_factory, type)
                                               and dataclasses.is_dataclass(f.default_factory)):
            yield from _keys(f.default_factory, prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_the_configuration_page_is_written_from_config_py_and_names_every_key():
    assert configdoc.undocumented() == [], "give these keys a comment in pipelines/config.py"
    page = (ROOT / configdoc.PAGE).read_text()
    assert page == configdoc.page(), "docs/configuration.md is out of date: run python -m lookalike.tools.configdoc"
    rows = dict(re.findall(r"^\| `([a-z0-9_.]+)` \| (.+?) \|", page, flags=re.M))
    assert sorted(rows) == sorted(_keys(Config)), "every key once, and no key that is not one"
    assert rows["extract.events_refetch_days"] == "`3`" and rows["neighbors.block_size"] == "`16_384`"
    assert "One of `auto`, `flat`, `ivf`, `ivfpq`, `hnsw`, `torch`." in page  # config.CHOICES, on the key's row


def test_the_check_fails_on_a_page_that_differs(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(configdoc.page().replace("neighbours per item", "neighbors per item"))
    assert configdoc.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert configdoc.main(["--out", str(stale)]) == 0 and configdoc.main(["--check", "--out", str(stale)]) == 0


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    for stage in ("extract", "train", "evaluate", "embed", "neighbors", "publish", "report", "userrec"):
        assert re.search(rf"│ {stage}\b", readme), f"the architecture omits {stage}"
    assert "make demo" in readme and "make test" in readme


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} names no file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: link to {target} names no heading of {dest.name}"


def _cli() -> dict[str, set[str] | None]:
    """Each verb of the ``lookalike`` parser, with its actions (``serving status``) where it has them."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    verbs = {}
    for name, parser in sub.choices.items():
        actions = [a.choices for a in parser._actions if a.dest == "action" and a.choices]
        verbs[name] = set(actions[0]) if actions else None
    return verbs


def _commands(text: str):
    """(verb, the word after it) of every ``lookalike …`` command in code: fenced blocks (but SQL, where
    ``lookalike`` is the schema) and `spans`."""
    blocks = re.findall(r"```(?!sql\n).*?```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for code in blocks + spans:
        for m in re.finditer(r"(?:^|[\s/(])lookalike ([a-z][\w-]*(?:\|[a-z][\w-]*)*)(?: ([a-z][\w-]*))?", code, re.M):
            for verb in m.group(1).split("|"):  # `lookalike extract|train …`: each of them
                yield verb, m.group(2)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_the_docs_name_is_the_clis_own(page):
    verbs = _cli()
    wrong = sorted({f"{verb} {action or ''}".strip() for verb, action in _commands(page.read_text())
                    if verb not in verbs or (verbs[verb] and action and action not in verbs[verb])})
    assert wrong == [], f"{page.name} names commands the CLI does not have: {wrong}"


def test_the_operations_page_lists_every_verb_and_the_check_sees_a_wrong_one():
    listed = {verb for verb, _ in _commands((ROOT / "docs" / "operations.md").read_text())}
    assert set(_cli()) - listed == set(), "docs/operations.md names every verb of the CLI"
    assert list(_commands("run `lookalike serving restart` or `lookalike embedd|train --ds D`")) == [
        ("serving", "restart"), ("embedd", None), ("train", None)]
