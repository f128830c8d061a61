"""The work area's contract: every intermediate output of a ds is named in pipelines/workarea.py,
and a name that is not is refused before anything is written."""
import re
from pathlib import Path

import pytest

from lookalike import workarea
from lookalike.orchestration.jobs import STAGES
from lookalike.storage import Warehouse

ROOT = Path(__file__).resolve().parents[1]
CALL = re.compile(r"""\.(?:fresh_)?work\(\s*[\w.]+\s*,\s*["']([^"']+)["']""")


def test_every_name_the_code_uses_is_listed_with_its_producer():
    used = {name for folder in ("pipelines", "tests", "benchmarks") for path in (ROOT / folder).rglob("*.py")
            for name in CALL.findall(path.read_text())}
    assert "catalog" in used and "item_embeddings" in used  # the pattern finds the calls
    assert used - set(workarea.BY_NAME) == set()
    stages = set(STAGES) | {"report", "summary", "intraday"}
    for output in workarea.OUTPUTS:
        assert output.producer in stages and set(output.readers) <= stages, output


def test_a_name_that_is_not_listed_is_refused(tmp_path):
    wh = Warehouse.at(tmp_path / "warehouse")
    assert wh.work("2026-11-21", "catalog") == tmp_path / "warehouse" / "_work" / "ds=2026-11-21" / "catalog"
    with pytest.raises(KeyError, match="not a work-area output"):
        wh.fresh_work("2026-11-21", "catalgo")
    assert not (tmp_path / "warehouse" / "_work" / "ds=2026-11-21" / "catalgo").exists()
