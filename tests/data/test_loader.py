"""The grain loader: disjoint per-process shares, epochs as permutations, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dalle2_jax.data.loader import BatchLoader


class IndexSource:
    """source[i] = {"i": i}: lets the test see exactly which examples were read."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"i": np.int64(index)}


def _batches(loader, n):
    return [b["i"].tolist() for b in itertools.islice(loader, n)]


def test_processes_read_disjoint_shares_of_the_global_batch():
    source = IndexSource(40)
    single = _batches(
        BatchLoader(source, global_batch_size=8, seed=3, process_count=1, process_index=0), 10
    )
    parts = [
        _batches(
            BatchLoader(source, global_batch_size=8, seed=3, process_count=2, process_index=p), 10
        )
        for p in range(2)
    ]
    for step in range(10):
        assert parts[0][step] + parts[1][step] == single[step]
        assert not set(parts[0][step]) & set(parts[1][step])


def test_each_epoch_is_a_fresh_permutation_and_seeded():
    source = IndexSource(32)
    flat = sum(_batches(BatchLoader(source, global_batch_size=8, seed=0), 8), [])
    epoch0, epoch1 = flat[:32], flat[32:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(32))
    assert epoch0 != epoch1 and epoch0 != list(range(32))
    again = sum(_batches(BatchLoader(source, global_batch_size=8, seed=0), 8), [])
    other = sum(_batches(BatchLoader(source, global_batch_size=8, seed=1), 8), [])
    assert again == flat and other != flat


def test_resume_from_saved_state_continues_with_the_next_unseen_batch():
    source = IndexSource(50)
    loader = BatchLoader(source, global_batch_size=4, seed=7)
    straight = _batches(loader, 9)
    first = BatchLoader(source, global_batch_size=4, seed=7)
    _batches(first, 5)
    state = first.state()
    start = BatchLoader.start_step_from_state(state, global_batch_size=4, seed=7)
    resumed = BatchLoader(source, global_batch_size=4, seed=7, start_step=start)
    assert _batches(resumed, 4) == straight[5:]
    with pytest.raises(ValueError, match="different global batch size"):
        BatchLoader.start_step_from_state(state, global_batch_size=8, seed=7)


def test_unshuffled_order_and_clear_errors():
    loader = BatchLoader(IndexSource(10), global_batch_size=4, seed=0, shuffle=False)
    assert _batches(loader, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    with pytest.raises(ValueError, match="not divisible"):
        BatchLoader(IndexSource(10), global_batch_size=5, seed=0, process_count=2, process_index=0)
    with pytest.raises(ValueError, match="no examples"):
        BatchLoader(IndexSource(0), global_batch_size=4, seed=0)
