"""Site readers for the tests: processes that read lists from an online store as a site does, until
told to stop, and write down what each read returned (its generation and a digest of the list), so
the test can tell afterwards whether any read was mixed, missing or failed.

Modes: ``postgres`` (one statement on the view, ``PostgresStore.lookup``), ``redis`` (the store's own
read: one round trip with the script on one node, the pointer and then the field on a cluster) and
``redis-two`` (the two commands docs/serving.md gives the site, written here with redis-py alone)."""
from __future__ import annotations

import hashlib
import json
import random
import time
import zlib
from pathlib import Path

import numpy as np


def digest(ids, scores) -> str:
    """The same for the same ids in the same order and the same float32 scores, whichever store read them."""
    return hashlib.md5(json.dumps(list(ids)).encode() + np.asarray(scores, dtype=np.float32).tobytes()).hexdigest()


def _two_commands(cfg):
    """The documented read: GET the pointer, then HGET the field in its bucket of the live generation."""
    import redis
    from redis.cluster import RedisCluster

    plain = redis.Redis.from_url(cfg.serving.redis.url)
    r = RedisCluster.from_url(cfg.serving.redis.url) if plain.info("cluster").get("cluster_enabled") else plain
    prefix = cfg.serving.redis.prefix

    def read(item: str):
        number = r.get(f"{prefix}:{{items}}:live")
        if number is None:
            return None
        value = r.hget(f"{prefix}:g:{int(number)}:item_neighbors:{zlib.crc32(item.encode()) % 1024}", item)
        if value is None:
            return None
        ids, scores = json.loads(value)
        return int(number), ids, scores

    return read


def read_until_stopped(config: str, mode: str, items: list[str], stop: str, out: str, seed: int) -> None:
    from lookalike.config import load_config
    from lookalike.online.handoff import open_store
    from lookalike.online.lists import BY_NAME

    cfg = load_config(config, environ={})
    if mode == "redis-two":
        read = _two_commands(cfg)
    else:
        store = open_store(cfg, mode)
        read = lambda item: store.lookup(BY_NAME["item_neighbors"], (item,))  # noqa: E731
    rng, seen, missing, errors = random.Random(seed), [], [], []
    while not Path(stop).exists():
        item = rng.choice(items)
        try:
            found = read(item)
        except Exception as exc:  # noqa: BLE001 - every failure a site would see is counted
            errors.append(f"{exc.__class__.__name__}: {exc}")
            time.sleep(0.01)
            continue
        if found is None:
            missing.append(item)
        else:
            seen.append((item, found[0], digest(found[1], found[2])))
    Path(out).write_text(json.dumps({"mode": mode, "seen": seen, "missing": missing, "errors": errors}))
