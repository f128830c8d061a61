"""docker-compose.yml: valid against the Compose specification, and a stack the DAGs can run on."""
import json
from pathlib import Path

import pytest
import yaml

from lookalike.config import load_config

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
    assert cfg.warehouse == "s3://lookalike/warehouse" and cfg.source.images.startswith("s3://")
    assert cfg.spark.master == "spark://spark-master:7077" and cfg.embed.launcher == "spark-submit"
    # credentials reach DAG runs only as Airflow Connections, never as Lookalike config
    assert env["AIRFLOW_CONN_LOOKALIKE_SOURCE"].startswith("postgres://")
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"].replace("${MINIO_ROOT_USER:-lookalike}", "u")
                     .replace("${MINIO_ROOT_PASSWORD:-lookalike-secret}", "p"))
    assert aws["conn_type"] == "aws" and aws["extra"]["endpoint_url"] == "http://minio:9000"
    for name in AIRFLOW:
        service_env = compose["services"][name]["environment"]
        assert not any(k.startswith("AWS_") or k == "LOOKALIKE_SOURCE__URL" for k in service_env), name
    assert not any(k.startswith(("AWS_", "LOOKALIKE_")) for k in compose["services"]["spark-worker"]["environment"])


DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile")) + sorted((REPO / "docker" / "stack-test").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_takes_its_base_as_a_build_argument(dockerfile):
    lines = [line for line in dockerfile.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE}", dockerfile.name
    assert "download.pytorch.org" not in dockerfile.read_text()  # nothing from an index PyPI users may not reach


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dependencies_are_installed_before_the_code_is_copied(dockerfile):
    lines = dockerfile.read_text().splitlines()
    deps = next(i for i, line in enumerate(lines) if "install-deps.sh " in line and line.startswith("RUN"))
    code = min(i for i, line in enumerate(lines) if line.startswith("COPY pipelines"))
    assert deps < code, dockerfile.name


def test_the_build_context_leaves_out_the_virtual_environment_and_local_data():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") if "*" in ignore else -1] == "*", "the context should allow-list what it sends"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not allowed & {".venv", "var", ".git"}
    for copied in ("pipelines", "jobs", "sql", "dags", "docker/wheelhouse", "docker/install-deps.sh"):
        assert copied in allowed, copied


def test_the_stack_test_override_leaves_lookalikes_own_services_as_shipped(compose):
    override = yaml.safe_load((REPO / "docker" / "stack-test" / "compose.yml").read_text())
    third_party = {"postgres", "redis", "minio", "minio-init"}
    for name, service in override["services"].items():
        assert name in compose["services"], name
        if name not in third_party:  # Lookalike's own: only a small run's config in the environment
            assert set(service) == {"environment"}, name
            assert all(key.startswith(("LOOKALIKE_", "AIRFLOW__SCHEDULER__")) for key in service["environment"]), name
