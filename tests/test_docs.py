"""The documentation says what the code does: the configuration page is written from
``pipelines/config.py`` and must match it, the README stays a front page, and every link lands."""
import dataclasses
import re
from pathlib import Path

import pytest

from pipelines.tools import configdoc
from pipelines.config import Config

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
    assert page == configdoc.page(), "docs/configuration.md is out of date: run python -m pipelines.tools.configdoc"
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
