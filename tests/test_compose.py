"""docker-compose.yml: valid against the Compose specification, and a stack the DAGs can run on."""
import json
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "compose-spec.json"
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
           "airflow-gpu-worker")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_validates_against_the_spec(compose):
    if not SPEC.exists():
        pytest.skip("../shared/compose-spec.json is absent")
    import jsonschema

    jsonschema.validate(compose, json.loads(SPEC.read_text()))


def test_every_build_context_and_mounted_file_exists_and_ports_stay_on_loopback(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_services_the_dags_need_are_there_with_health_checks(compose):
    services = compose["services"]
    needed = {"postgres", "redis", "minio", "minio-init", "spark-master", "spark-worker", "airflow-init",
              "lookalike-seed", *AIRFLOW}
    assert needed <= set(services)
    for name in ("postgres", "redis", "minio", "spark-master", *AIRFLOW):
        assert "healthcheck" in services[name], name
    for worker, queue in (("airflow-worker", "default"), ("airflow-gpu-worker", "gpu")):
        command = services[worker]["command"]
        assert command[command.index("--queues") + 1] == queue, worker
    gpu = services["airflow-gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "airflow pools set gpu" in " ".join(services["airflow-init"]["command"])
    assert "lookalike sample-data" in " ".join(services["lookalike-seed"]["command"])


def test_airflow_services_share_one_jwt_secret_and_a_valid_lookalike_config(compose):
    envs = [compose["services"][name]["environment"] for name in AIRFLOW]
    assert len({env["AIRFLOW__API_AUTH__JWT_SECRET"] for env in envs}) == 1
    assert all(env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" for env in envs)
    # every LOOKALIKE_* variable is a real config key (unknown keys are an error) with the stack's values
    env = {k: str(v) for k, v in envs[0].items()}
    cfg = load_config(None, environ=env)
    assert cfg.warehouse == "s3://lookalike/warehouse" and cfg.source.url.startswith("postgresql+psycopg://")
    assert cfg.spark.master == "spark://spark-master:7077" and cfg.source.images.startswith("s3://")
