"""Rank-sharded streaming: disjoint coverage, determinism, exact resume, equal batch counts."""

from itertools import islice

import numpy as np
import pytest
import torch

from data_tools.convert import convert
from pipeline.config import StoreLayout
from pipeline.data.shower_store import ShowerStore
from pipeline.data.stream import ShowerStream, StreamError

from conftest import write_random_showers


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    write_random_showers(d / "in.hdf5", 203, "ds2", seed=11)  # 26 chunks of 8, the last one short (3 rows)
    return ShowerStore(convert([d / "in.hdf5"], d / "s.zarr", "ds2", layout=StoreLayout(8, 32),
                               validation_fraction=0.2, progress=False))


def indices(stream, n=None):
    return [b["index"].numpy().copy() for b in (stream if n is None else islice(stream, n))]


@pytest.mark.parametrize("resident", [False, True])
def test_ranks_read_disjoint_chunks_with_equal_batch_counts(store, resident):
    for world in (1, 2, 3):
        streams = [ShowerStream(store, 5, rank=r, world_size=world, seed=4, epochs=1, shuffle_chunks=3,
                                resident=resident) for r in range(world)]
        per_rank = [indices(s) for s in streams]
        counts = {len(p) for p in per_rank}
        assert len(counts) == 1 and counts.pop() == streams[0].batches_per_epoch  # no rank waits at a collective
        flat = [np.concatenate(p) for p in per_rank]
        for i in range(world):
            assert len(set(flat[i])) == len(flat[i])
            for j in range(i):
                assert not set(flat[i]) & set(flat[j])
            chunks = {int(k) // 8 for k in flat[i]}
            assert chunks <= set(store.chunk_ids("train"))  # never validation rows
            assert len({(int(k) // 8) for k in flat[i]}) <= streams[i].chunks_per_rank


def test_epoch_uses_nearly_all_training_rows_once(store):
    s = ShowerStream(store, 4, seed=1, epochs=1)
    seen = np.concatenate(indices(s))
    train_rows = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in store.chunk_ids("train"))
    assert len(seen) == len(set(seen)) and train_rows - len(seen) < 4 + 8


def test_content_matches_store(store):
    b = next(iter(ShowerStream(store, 6, seed=3)))
    rows = b["index"].numpy()
    np.testing.assert_array_equal(b["showers"].numpy(), np.stack([store.showers[i] for i in rows]))
    np.testing.assert_array_equal(b["energies"].numpy(), store.energies[rows])
    assert b["showers"].dtype == torch.float32 and b["showers"].shape == (6, 45, 16, 9)


def test_deterministic_and_shuffled_per_epoch(store):
    a = indices(ShowerStream(store, 5, seed=7, epochs=2))
    b = indices(ShowerStream(store, 5, seed=7, epochs=2, num_workers=1, prefetch_chunks=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    n = len(a) // 2
    assert not np.array_equal(np.concatenate(a[:n]), np.concatenate(a[n:]))  # epochs differ
    c = indices(ShowerStream(store, 5, seed=8, epochs=1))
    assert not np.array_equal(np.concatenate(a[:n]), np.concatenate(c))  # seeds differ
    ordered = np.concatenate(indices(ShowerStream(store, 5, split="validation", shuffle=False, epochs=1)))
    assert np.all(np.diff(ordered) > 0)


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("stop_at", [1, 6, 7, 13])
def test_resume_reproduces_uninterrupted_stream(store, resident, stop_at):
    kw = dict(seed=5, rank=1, world_size=2, shuffle_chunks=2, resident=resident)
    full = indices(ShowerStream(store, 3, **kw), 20)
    first = ShowerStream(store, 3, **kw)
    head = indices(first, stop_at)
    state = first.state_dict()
    resumed = ShowerStream(store, 3, **kw)
    resumed.load_state_dict(state)
    tail = indices(resumed, 20 - stop_at)
    assert all(np.array_equal(x, y) for x, y in zip(head + tail, full))


def test_bad_settings_are_clear_errors(store):
    with pytest.raises(StreamError, match="needs at least"):
        ShowerStream(store, 1000)
    s = ShowerStream(store, 4, seed=1)
    state = s.state_dict()
    with pytest.raises(StreamError, match="saved world_size=1 but this run has 2"):
        ShowerStream(store, 4, seed=1, world_size=2).load_state_dict(state)
    with pytest.raises(StreamError, match="bad batch_size"):
        ShowerStream(store, 0)
