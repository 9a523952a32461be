"""Jigsaw permutation sets: valid, distinct, far apart, the paper's greedy rule, cached."""

import itertools
import time

import numpy as np
import pytest

from selfsup.models.registry import ConfigError
from selfsup.tasks.permutations import (
    all_permutations,
    default_cache_dir,
    generate_permutation_set,
    permutation_set,
)


def pairwise_hamming(perms: np.ndarray) -> np.ndarray:
    """Hamming distances of all pairs i < j, one row at a time."""
    return np.concatenate([(perms[i + 1:] != perms[i]).sum(axis=1)
                           for i in range(len(perms) - 1)])


@pytest.fixture(scope="module")
def timed_sets() -> dict:
    """The 100- and 1000-permutation sets (average criterion, seed 0) and their build times."""
    sets = {}
    for size in (100, 1000):
        start = time.perf_counter()
        sets[size] = generate_permutation_set(size, seed=0, criterion="average")
        sets[f"seconds_{size}"] = time.perf_counter() - start
    return sets


def greedy_reference(size: int, seed: int, criterion: str, n: int) -> list[tuple[int, ...]]:
    """Noroozi & Favaro's Algorithm 1 written out with Python loops over itertools' order."""
    candidates = list(itertools.permutations(range(n)))
    chosen = [candidates[int(np.random.default_rng(seed).integers(len(candidates)))]]
    while len(chosen) < size:
        best, best_score = None, -1
        for candidate in candidates:
            if candidate in chosen:
                continue
            distances = [sum(a != b for a, b in zip(candidate, c, strict=True)) for c in chosen]
            score = sum(distances) if criterion == "average" else min(distances)
            if score > best_score:  # strict: the first maximum wins
                best, best_score = candidate, score
        chosen.append(best)
    return chosen


def test_all_permutations_are_itertools_order():
    np.testing.assert_array_equal(all_permutations(9),
                                  np.array(list(itertools.permutations(range(9)))))


@pytest.mark.parametrize("criterion", ["average", "minimum"])
def test_greedy_choice_matches_a_plain_loop_reference(criterion):
    got = generate_permutation_set(12, seed=3, criterion=criterion, num_tiles=5)
    assert [tuple(row) for row in got] == greedy_reference(12, 3, criterion, 5)


@pytest.mark.parametrize("size", [100, 1000])
def test_sets_hold_distinct_permutations_of_nine_tiles(size, timed_sets):
    perms = timed_sets[size]
    assert perms.shape == (size, 9)
    for row in perms:
        assert sorted(row.tolist()) == list(range(9))
    assert len({tuple(row) for row in perms}) == size
    assert pairwise_hamming(perms).min() >= 2  # distinct permutations differ in ≥ 2 places


@pytest.mark.parametrize("size, margin", [(100, 0.06), (1000, 0.006)])
def test_average_criterion_is_farther_apart_than_a_random_set(size, margin, timed_sets):
    perms = timed_sets[size]
    rng = np.random.default_rng(0)
    random_set = np.argsort(rng.random((size, 9)), axis=1)
    chosen_mean = pairwise_hamming(perms).mean()
    random_mean = pairwise_hamming(random_set).mean()
    assert chosen_mean > random_mean
    # A random pair of 9-permutations differs in 9 − E[fixed points] = 8 places on average;
    # the mean of a random set of 100 (1000) has a standard deviation of 0.015 (0.0012)
    # (measured over 20 seeds), so the margins are 4–5 standard deviations.
    assert chosen_mean > 8.0 + margin


def test_minimum_criterion_keeps_every_pair_far_apart(timed_sets):
    maxmin = generate_permutation_set(100, seed=0, criterion="minimum")
    average = timed_sets[100]
    random_set = np.argsort(np.random.default_rng(0).random((100, 9)), axis=1)
    assert pairwise_hamming(maxmin).min() >= 5
    assert pairwise_hamming(maxmin).min() > pairwise_hamming(average).min()
    assert pairwise_hamming(maxmin).min() > pairwise_hamming(random_set).min()


def test_the_seed_picks_the_first_permutation_and_fixes_the_set():
    a = generate_permutation_set(20, seed=1)
    np.testing.assert_array_equal(a, generate_permutation_set(20, seed=1))
    b = generate_permutation_set(20, seed=2)
    assert not np.array_equal(a[0], b[0])
    table = all_permutations(9)
    np.testing.assert_array_equal(a[0], table[np.random.default_rng(1).integers(len(table))])


def test_a_thousand_permutations_take_seconds_not_minutes(timed_sets):
    # Measured 1.2 s alone; the bound leaves room for a loaded 2-core machine.
    assert timed_sets["seconds_1000"] < 30


def test_sets_are_cached_atomically_and_corrupt_files_regenerated(tmp_path, monkeypatch,
                                                                  timed_sets):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    perms = permutation_set(100, seed=0)
    np.testing.assert_array_equal(perms, timed_sets[100])
    files = list(tmp_path.rglob("*"))
    cached = [f for f in files if f.suffix == ".npy"]
    assert len(cached) == 1 and not [f for f in files if f.suffix == ".tmp"]
    np.testing.assert_array_equal(np.load(cached[0]), perms)
    # A cached file is what later calls return (a valid but different set proves it is read).
    other = timed_sets[100][::-1].copy()
    np.save(cached[0], other)
    np.testing.assert_array_equal(permutation_set(100, seed=0), other)
    cached[0].write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(permutation_set(100, seed=0), perms)
    np.testing.assert_array_equal(np.load(cached[0]), perms)


def test_impossible_sizes_and_criteria_are_config_errors():
    with pytest.raises(ConfigError, match="members"):
        generate_permutation_set(121, num_tiles=5)
    with pytest.raises(ConfigError, match="criterion"):
        generate_permutation_set(10, criterion="median")
