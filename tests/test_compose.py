"""docker-compose.yml: valid against the Compose specification, build contexts exist."""
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "compose-spec.json"


def test_compose_file_validates_against_the_spec():
    if not SPEC.exists():
        pytest.skip("../shared/compose-spec.json is absent")
    import jsonschema

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    jsonschema.validate(compose, json.loads(SPEC.read_text()))


def test_build_contexts_and_dockerfiles_exist():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
