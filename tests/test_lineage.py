"""OpenLineage with the provider installed, read back from its file transport: extract, nightly and user recs
each emit START and COMPLETE events for every task, with the datasets where they live (the listings database
and its tables, the image store, the work area, the model store, each published table with its schema facet)
and no credential in any name."""
import json
import subprocess
import sys
from pathlib import Path

from lookalike import schemas, tables
from lookalike.config import load_config
from lookalike.orchestration.orchestrate import airflow_env
from lookalike.train.stage import run_train
from tests.conftest import DS, write_config


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_extract_nightly_and_user_recs_emit_their_real_datasets(tmp_path, sample_dir):
    config = write_config(tmp_path, sample_dir)
    cfg = load_config(config, environ={})
    lineage = tmp_path / "lineage.jsonl"
    env = {**airflow_env(cfg, str(config)), "AIRFLOW__OPENLINEAGE__NAMESPACE": "lookalike-test",
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(lineage),
                                                          "append": True})}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)

    def dags_test(dag_id: str) -> None:
        run = subprocess.run([airflow, "dags", "test", dag_id, DS], env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    dags_test("lookalike_extract")
    run_train(cfg, DS)  # the user model reads a trained SigLIP (lookalike_finetune's part)
    dags_test("lookalike_nightly")
    dags_test("lookalike_user_recs")

    events = _events(lineage)
    jobs = {}
    for event in events:
        jobs.setdefault(event["job"]["name"], []).append(event)
    for dag_id, task_id in [("lookalike_extract", "extract"), ("lookalike_nightly", "publish"),
                            ("lookalike_nightly", "embed"), ("lookalike_user_recs", "publish")]:
        states = {e["eventType"] for e in jobs.get(f"{dag_id}.{task_id}", [])}
        assert {"START", "COMPLETE"} <= states, (dag_id, task_id, sorted(jobs))
    done = {name: next(e for e in found if e["eventType"] == "COMPLETE") for name, found in jobs.items()
            if any(e["eventType"] == "COMPLETE" for e in found)}

    def names(event, side):
        return {(d["namespace"], d["name"]) for d in event[side]}

    db = str((sample_dir / "marketplace.db").resolve())
    extract = done["lookalike_extract.extract"]
    assert {(f"sqlite://{db}", "listings"), (f"sqlite://{db}", "interactions"),
            ("file", str((sample_dir / "images").resolve()))} <= names(extract, "inputs")
    work = Path(cfg.warehouse).resolve() / "_work"
    assert ("file", str(work / "listings_snapshot")) in names(extract, "outputs")
    embed = done["lookalike_nightly.embed"]
    assert ("file", str(Path(cfg.models).resolve())) in names(embed, "inputs")
    warehouse = Path(cfg.warehouse).resolve()
    for dag_id in (tables.NIGHTLY, tables.USER_RECS):
        outputs = {d["name"]: d for d in done[f"{dag_id}.publish"]["outputs"]}
        for table in tables.published_by(dag_id):
            found = outputs[str(warehouse / table)]
            assert found["namespace"] == "file"
            fields = [f["name"] for f in found["facets"]["schema"]["fields"]]
            assert fields == schemas.PUBLISHED[table].names, table
    assert "lookalike-test" in {e["job"]["namespace"] for e in events}
