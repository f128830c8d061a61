"""A warehouse and both online stores for each test: real PostgreSQL and Redis servers on loopback
(session fixtures of tests/conftest.py), a schema and a key prefix of the test's own."""
import uuid

import pytest
import yaml

from lookalike.config import load_config


@pytest.fixture
def online(tmp_path, postgres_url, redis_url):
    """make(**serving) → the config of a warehouse under tmp_path handing off to both stores."""
    name = "t" + uuid.uuid4().hex[:10]

    def make(sinks: str = "postgres,redis", **serving):
        stores = {"postgres": {"url": postgres_url, "schema": name}, "redis": {"url": redis_url, "prefix": name}}
        for sink in stores:
            stores[sink].update(serving.pop(sink, {}))
        data = {"warehouse": str(tmp_path / "warehouse"), "serving": {"sinks": sinks, **stores, **serving}}
        path = tmp_path / "lookalike.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config(path, environ={})

    return make
