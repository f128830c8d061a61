import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.siglip import Preprocess, train_tokenizer
from lookalike.train.data import (DecodedCache, PairStream, StreamPlan, batch_loader, batches_from, fragments,
                                  group_ids, read_texts)


def _plan(snapshot, world_size=1, rank=0, train=None, **kw):
    frags = fragments(snapshot)
    n = sum(f.rows for f in frags)
    mask = np.ones(n, bool) if train is None else train
    return frags, StreamPlan(frags, mask, seed=3, rank=rank, world_size=world_size, window_rows=64, **kw)


def test_ranks_share_every_epoch_without_overlap_or_loss(colour_snapshot):
    frags = fragments(colour_snapshot)
    assert len(frags) == 3  # 256 rows in row groups of 100
    train = np.ones(256, bool)
    train[::10] = False  # the held-out rows never reach a rank
    for world in (1, 2, 3):
        for epoch in (0, 1):
            shares = [_plan(colour_snapshot, world, r, train)[1].epoch_rows(epoch) for r in range(world)]
            rows = np.concatenate(shares)
            assert sorted(rows.tolist()) == np.flatnonzero(train).tolist()
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    _, plan = _plan(colour_snapshot)
    assert not np.array_equal(plan.epoch_rows(0), plan.epoch_rows(1))  # reshuffled every epoch


def test_batches_cross_epochs_and_do_not_depend_on_workers(colour_snapshot):
    frags, plan = _plan(colour_snapshot)
    stream_rows = np.concatenate([plan.epoch_rows(0), plan.epoch_rows(1)])
    assert np.array_equal(plan.batch_rows(4, 60), stream_rows[240:300])  # batch 4 spans epochs 0 and 1

    texts = read_texts(colour_snapshot, "{title}")
    tok = train_tokenizer(texts.texts, 60, 8)
    groups = group_ids(texts.shas, texts.texts)

    def first(workers, start=0, n=5, cache=None):
        stream = PairStream(frags, texts.texts, groups, plan, batch_size=32, preprocess=Preprocess(16),
                            tokenizer=tok, max_text_length=8, start=start, cache=cache)
        it = iter(batch_loader(stream, workers, pin_memory=False))
        return [next(it) for _ in range(n)]

    inline, forked = first(0), first(2)
    cache = DecodedCache(256, 16, 8, budget_mb=10)
    cached = first(2, n=12, cache=cache)  # 12 x 32 rows: more than an epoch, so rows come back from the cache
    assert cache.enabled and int(cache.filled.sum()) == 256  # filled by the worker processes
    resumed = first(2, start=3, n=2)
    for a, b in zip(inline, forked):
        assert all(torch.equal(a[k], b[k]) for k in a)
    uncached = first(0, n=12)
    for a, b in zip(uncached, cached):
        assert all(torch.equal(a[k], b[k]) for k in a)

    # as the stage iterates: workers until every row is cached, then in-process; same batches
    cache = DecodedCache(256, 16, 8, budget_mb=10, needed=np.ones(256, bool))
    make = lambda start: PairStream(frags, texts.texts, groups, plan, batch_size=32,  # noqa: E731
                                    preprocess=Preprocess(16), tokenizer=tok, max_text_length=8, start=start,
                                    cache=cache)
    it = batches_from(make, 0, 2, False, cache)
    switched = [next(it) for _ in range(12)]
    assert cache.complete()
    for a, b in zip(uncached, switched):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not DecodedCache(256, 16, 8, budget_mb=0).enabled
    for a, b in zip(inline[3:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert inline[0]["pixels"].shape == (32, 16, 16, 3) and inline[0]["pixels"].dtype == torch.uint8
    assert inline[0]["input_ids"].shape == (32, 8)
    # the pixels are the photos of the rows the plan named
    rows = plan.batch_rows(0, 32)
    assert torch.equal(inline[0]["groups"], torch.from_numpy(groups[rows]))


def test_too_few_rows_for_the_ranks_is_a_clear_error(colour_snapshot):
    train = np.zeros(256, bool)
    train[0] = True
    with pytest.raises(LookalikeError, match="cannot be shared by 2 ranks"):
        _plan(colour_snapshot, 2, 1, train)
