"""Permutation sets for the jigsaw puzzle task, chosen by maximal Hamming distance.

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016, §3.3 and Algorithm 1: start from one permutation drawn at random from all 9!, then
repeatedly add the permutation whose Hamming distance to the permutations chosen so far is
largest. The paper's criterion is the *average* distance (Algorithm 1 sums the distance rows and
takes the argmax); maximising the *minimum* distance (max-min) is a common alternative.
Ties go to the first candidate in lexicographic order, as an argmax over the candidate list does
in Algorithm 1.

The search keeps one running score per candidate (the sum, or the minimum, of its distances to
the chosen set) and updates it with the distances to the newest permutation only, vectorised
over all 9! = 362,880 candidates: a set of 1000 takes a few seconds.

Permutations are 0-indexed (files published with the paper's code are 1-indexed). Sets are
cached as ``.npy`` files under :func:`default_cache_dir`, written atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from selfsup.models.registry import ConfigError

CRITERIA = ("average", "minimum")
NUM_JIGSAW_TILES = 9  # 3×3 grid (Noroozi & Favaro 2016, §3)
# Bumped whenever the generation rule changes, so stale cache files are not reused.
ALGORITHM_VERSION = 1


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")


def all_permutations(n: int) -> np.ndarray:
    """Every permutation of ``range(n)`` in lexicographic order, ``[n!, n]`` uint8.

    Built from the permutations of ``n - 1`` elements, one block per leading element, so the
    work is vectorised (no per-permutation Python loop).
    """
    perms = np.zeros((1, 0), dtype=np.uint8)
    for size in range(1, n + 1):
        blocks = []
        for first in range(size):
            rest = np.array([v for v in range(size) if v != first], dtype=np.uint8)
            head = np.full((len(perms), 1), first, dtype=np.uint8)
            blocks.append(np.concatenate([head, rest[perms]], axis=1))
        perms = np.concatenate(blocks, axis=0)
    return perms


def hamming_distances(candidates_by_position: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Hamming distance of each candidate to ``permutation``.

    ``candidates_by_position`` is ``[n, num_candidates]`` (position-major, so every comparison
    runs over a contiguous row); returns ``[num_candidates]`` int32.
    """
    distance = np.zeros(candidates_by_position.shape[1], dtype=np.int32)
    for position, value in enumerate(permutation):
        distance += candidates_by_position[position] != value
    return distance


def generate_permutation_set(size: int, seed: int = 0, criterion: str = "average",
                             num_tiles: int = NUM_JIGSAW_TILES) -> np.ndarray:
    """``[size, num_tiles]`` int32 permutations by greedy maximal Hamming distance (see module).

    Deterministic from ``seed``, which picks the first permutation.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    total = math.factorial(num_tiles)
    if not 1 <= size <= total:
        raise ConfigError(f"a permutation set of {num_tiles} tiles has 1..{total} members, "
                          f"got {size}")
    candidates = np.ascontiguousarray(all_permutations(num_tiles).T)
    chosen = [int(np.random.default_rng(seed).integers(total))]
    # Running score of every candidate against the chosen set: sum or minimum of distances.
    score = hamming_distances(candidates, candidates[:, chosen[0]])
    taken = np.zeros(total, dtype=bool)
    taken[chosen[0]] = True
    for _ in range(size - 1):
        masked = np.where(taken, -1, score)
        best = int(np.argmax(masked))
        chosen.append(best)
        taken[best] = True
        distance = hamming_distances(candidates, candidates[:, best])
        if criterion == "average":
            score += distance
        else:
            np.minimum(score, distance, out=score)
    return candidates[:, chosen].T.astype(np.int32)


def is_valid_permutation_set(perms: np.ndarray, size: int, num_tiles: int) -> bool:
    """Shape ``[size, num_tiles]``, every row a permutation of ``range(num_tiles)``, no repeats."""
    if perms.shape != (size, num_tiles):
        return False
    if not np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(num_tiles),
                                                                 perms.shape)):
        return False
    return len(np.unique(perms, axis=0)) == size


def permutation_set(size: int, seed: int = 0, criterion: str = "average",
                    num_tiles: int = NUM_JIGSAW_TILES,
                    cache_dir: str | Path | None = None) -> np.ndarray:
    """The cached permutation set for these settings, generated and cached on first use.

    A missing or corrupt cache file is (re)generated; the file is written to a temporary name in
    the cache dir and renamed, so concurrent processes never read a partial file.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = (directory / "permutations"
            / f"hamming_v{ALGORITHM_VERSION}_{criterion}_{num_tiles}tiles_{size}_seed{seed}.npy")
    if path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError):
            cached = None
        if cached is not None and is_valid_permutation_set(cached, size, num_tiles):
            return cached.astype(np.int32)
    perms = generate_permutation_set(size, seed, criterion, num_tiles)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, perms)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return perms
