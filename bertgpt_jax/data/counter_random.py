"""Counter-based random numbers: a pure function of (seed, row key, stream, position), vectorised.

An example's masks then depend only on its own index (and epoch), never on which batch, worker or
process built it, so a restored or re-sharded pipeline reproduces the exact same examples.
The mixer is SplitMix64's finaliser; numpy's uint64 arithmetic wraps, which is what it wants.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64 with good avalanche."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_keys(seed: int, index_B: np.ndarray, epoch_B: np.ndarray | int = 0) -> np.ndarray:
    """One uint64 key per example, from the dataset seed, the example index and the epoch."""
    index_B = np.asarray(index_B, np.int64).astype(np.uint64)
    epoch_B = np.asarray(epoch_B, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        k = mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
        k = mix(k ^ (index_B * _GOLDEN))
        return mix(k ^ (epoch_B + _M1))


def bits(keys_B: np.ndarray, stream: int, positions) -> np.ndarray:
    """uint64 random bits of stream ``stream`` of each row at ``positions``: an int (all of
    ``0..positions-1``, giving [B, positions]) or an int array [B, K] (giving [B, K])."""
    if np.isscalar(positions):
        positions = np.arange(int(positions))[None, :]
    with np.errstate(over="ignore"):
        base_B = mix(keys_B ^ np.uint64(stream * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))
        pos = (np.asarray(positions, np.int64) + 1).astype(np.uint64) * _GOLDEN
        return mix(base_B[:, None] + pos)


def uniform(keys_B: np.ndarray, stream: int, positions) -> np.ndarray:
    """float64 uniform in [0, 1), shaped as :func:`bits`."""
    return (bits(keys_B, stream, positions) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def integers(keys_B: np.ndarray, stream: int, positions, high: int) -> np.ndarray:
    """int64 uniform in [0, high) (bias below 2**-40 for any vocabulary size), shaped as :func:`bits`."""
    return ((bits(keys_B, stream, positions) >> np.uint64(24)) % np.uint64(high)).astype(np.int64)
