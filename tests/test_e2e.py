"""End to end, as a user installs it: the wheel built from this checkout, installed with its extras
into a fresh virtual environment outside the checkout; from an empty directory `lookalike
sample-data` makes a tiny marketplace and `lookalike run` drives the real Airflow DAGs over it. An
existing Airflow pointed at the installed DAGs finds every DAG."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lookalike.config import load_config
from lookalike.query import run_query
from lookalike.storage import PUBLISHED_TABLES, Warehouse
from lookalike.tables import NIGHTLY, USER_RECS, published_by
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]
CHECKOUT = [sys.executable, "-m", "lookalike.tools.cli"]
A_NIGHT = (*published_by(NIGHTLY), *published_by(USER_RECS))  # what `lookalike run` publishes (not the hours)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True, timeout=300)
    (built,) = dist.glob("lookalike-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel):
    """(the installed ``lookalike``, its environment, an empty working directory): the wheel of this
    checkout with ``[all]`` in a fresh venv, nothing of the checkout on its path."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
                           f"{wheel}[all]"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    empty = root / "empty"
    empty.mkdir()
    return [str(venv / "bin" / "lookalike")], env, empty


def _run(*args, check=True, lookalike=None, **kw):
    """``lookalike ARGS`` as installed (``lookalike=installed``), else from this checkout."""
    command, env, cwd = lookalike if lookalike else (CHECKOUT, None, REPO)
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=900, cwd=cwd, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"lookalike {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _contents(wh: Warehouse) -> dict:
    """Every published table's rows (sorted), for comparing two runs."""
    out = {}
    for table in PUBLISHED_TABLES:
        columns, rows = run_query(wh, f"select * from {table}_all")
        out[table] = sorted(json.dumps(dict(zip(columns, r)), default=str, sort_keys=True) for r in rows)
    return out


@pytest.fixture(scope="module")
def nightly(installed):
    _, _, empty = installed
    _run("sample-data", "--out", "sample", "--items", "400", "--users", "120", "--days", "120", "--seed", "1",
         "--end", DS, lookalike=installed)
    look = {"variants": {"baseline": {"serve": "image_baseline", "share": 0.5},
                         "served": {"serve": "production", "share": 0.5}}}  # an A/B test runs through the DAG
    config = write_config(empty, empty / "sample", embed={"local_max_rows": 0},  # the first night embeds on Spark
                          experiments={"look": look})
    proc = _run("run", "--config", str(config), "--ds", DS, lookalike=installed)
    return config, Warehouse.of(load_config(config, environ={})), proc.stdout, installed


def test_the_wheel_installs_one_top_level_package_with_the_folders_inside_it(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"lookalike"}
    for shipped in ("lookalike/extract/stage.py", "lookalike/jobs/train.py", "lookalike/sql/extract/catalog.sql",
                    "lookalike/dags/lookalike_nightly.py", "lookalike/resources/gpu-discovery.sh"):
        assert shipped in names  # pipelines/, jobs/, sql/ and dags/, each where the tour says


def test_the_installed_package_runs_from_its_own_files_not_the_checkout(installed):
    command, env, cwd = installed
    python = str(Path(command[0]).with_name("python"))
    where = subprocess.run([python, "-c", "import lookalike, lookalike.jobs as jobs; from lookalike.resources import sql_path, "
                            "dags_folder; print(lookalike.__file__, jobs.__file__, sql_path(), dags_folder())"],
                           capture_output=True, text=True, cwd=cwd, env=env, check=True).stdout.split()
    assert all(path.startswith(str(Path(python).parents[1])) for path in where), where  # all in the venv
    assert not any(path.startswith(str(REPO)) for path in where)


def test_an_existing_airflow_pointed_at_the_installed_dags_finds_every_dag(installed, tmp_path):
    command, env, cwd = installed
    folder = _run("dags-folder", lookalike=installed).stdout.strip()
    script = ("import json, sys; from airflow.dag_processing.dagbag import DagBag; "
              "bag = DagBag(dag_folder=sys.argv[1]); "
              "print(json.dumps({'dags': sorted(bag.dag_ids), 'errors': {k: str(v) for k, v in bag.import_errors.items()}}))")
    proc = subprocess.run([str(Path(command[0]).with_name("python")), "-c", script, folder], capture_output=True,
                          text=True, cwd=cwd, env={**env, "AIRFLOW_HOME": str(tmp_path / "airflow"),
                                                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bag = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bag == {"dags": ["lookalike_extract", "lookalike_finetune", "lookalike_intraday", "lookalike_nightly",
                            "lookalike_user_recs"], "errors": {}}


def test_run_goes_through_airflow_and_prints_the_summary(nightly):
    config, wh, stdout, installed = nightly
    for task in ("extract", "train", "evaluate", "embed", "neighbors", "experiments", "publish", "report", "userrec"):
        assert f"── task {task}" in stdout
    assert "Published tables:" in stdout and "nDCG@5" in stdout and "lookalike query" in stdout
    assert "User recommendations:" in stdout and "multimodal" in stdout
    assert "reused 0, computed" in stdout and "(spark)" in stdout
    assert "Extract: snapshot" in stdout and "photos reused" in stdout and "fetched" in stdout
    assert all(DS in wh.partitions(t) for t in A_NIGHT)


def test_neighbor_rows_equal_k_times_items_with_neighbours(nightly):
    config, wh, _, installed = nightly
    proc = _run("query", "--config", str(config), "--format", "json", "select count(*) as n from item_neighbors",
                lookalike=installed)
    total = json.loads(proc.stdout)[0]["n"]
    items = run_query(wh, "select count(distinct item_id) from item_neighbors")[1][0][0]
    assert items > 100 and total == 5 * items


def test_every_sql_file_runs_against_the_output(nightly):
    config, wh, _, installed = nightly
    files = sorted((REPO / "sql" / "analytics").glob("*.sql"))
    assert len(files) >= 4
    for path in files:
        columns, rows = run_query(wh, path.read_text())
        assert columns, path.name
        if path.name != "neighbor_overlap_day_over_day.sql":  # needs two published days
            assert rows, path.name
    item = run_query(wh, "select max(item_id) from item_neighbors")[1][0][0]
    _, rows = run_query(wh, (REPO / "sql" / "analytics" / "similar_items.sql").read_text(), {"item_id": item})
    assert [r[2] for r in rows] == [1, 2, 3, 4, 5] and all(r[0] == item for r in rows)


def test_rerunning_the_same_ds_leaves_published_tables_identical(nightly):
    config, wh, _, installed = nightly
    before = _contents(wh)
    proc = _run("run", "--config", str(config), "--ds", DS, lookalike=installed)
    assert _contents(wh) == before
    assert "computed 0 (none)" in proc.stdout  # every embedding reused: same items, photos and model
    _, rows = run_query(wh, (REPO / "sql" / "analytics" / "neighbor_overlap_day_over_day.sql").read_text())
    assert rows == []  # still one published day


def test_each_dag_emits_its_asset_events_with_the_ds(nightly):
    import sqlite3

    config, wh, _, installed = nightly
    home = load_config(config, environ={}).airflow.home
    with sqlite3.connect(Path(home) / "airflow.db") as db:
        events = db.execute("select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id "
                            "order by e.id").fetchall()
    latest = {name.removeprefix("lookalike."): json.loads(extra) for name, extra in events}  # newest per asset
    assert set(latest) == set(A_NIGHT) | {"snapshot", "model"}
    assert latest["snapshot"] == {"ds": DS}  # extract → schedules lookalike_nightly
    assert latest["model"]["ds"] == DS and latest["model"]["version"]
    neighbours = latest["item_neighbors"]
    assert neighbours["ds"] == DS and neighbours["run_id"] == wh.entries("item_neighbors")[DS]["run_id"]
    assert neighbours["rows"] == wh.entries("item_neighbors")[DS]["rows"]


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_run_report_renders_as_a_gallery_in_headless_chromium(nightly, tmp_path):
    import numpy as np
    from PIL import Image

    config, wh, stdout, installed = nightly
    report = wh.work(DS, "report") / "index.html"
    assert f"Report (HTML gallery of this run): {report}" in stdout  # written by the DAG's report task
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") >= 12 * 6  # 12 sampled items, each with its neighbours' photos
    assert page.count("<svg") == 4  # coverage, rank-1 scores per category, score by rank, nDCG@5 by ds
    assert "<h3>look</h3>" in page and "No logged module impression of this experiment yet" in page
    assert "ndcg@5" in page and "recall@5" in page  # the offline evaluation and the run's index statistics
    # the CLI writes the same kind of page anywhere
    out = tmp_path / "again.html"
    assert "Report of ds=" in _run("report", "--config", str(config), "--ds", DS, "--out", str(out),
                                       lookalike=installed).stdout

    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian package chromium); .ci/run installs it")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,1600",
                    f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    ink = (pixels < 235).any(axis=2).mean()  # share of pixels that are not (near) white
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()  # product photos, coloured frames
    distinct = len(np.unique(pixels.reshape(-1, 3) // 8, axis=0))
    assert ink > 0.08 and colourful > 0.02 and distinct > 300, (ink, colourful, distinct)


def test_a_failed_run_says_where_the_log_is(tmp_path, sample_dir):
    config = write_config(tmp_path, sample_dir)
    proc = _run("run", "--config", str(config), "--ds", "2020-01-01", check=False)
    assert proc.returncode != 0
    assert "failed for ds=2020-01-01" in proc.stderr and "Airflow log" in proc.stderr
    assert "no listings created in" in proc.stdout  # the stage's own error reaches the console
