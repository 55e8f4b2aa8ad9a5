"""Rendezvous (highest-random-weight) hashing: the order in which backends should serve a
conversation, computed from the conversation's key and the backends' names alone.

Every backend gets a score from a hash of (key, name); the highest score serves. Weights scale
the scores (`-weight / ln(u)`, u uniform in (0, 1)), so a backend of weight 2 wins twice as many
conversations as one of weight 1. Adding or removing a backend moves only the conversations it
wins or held, and N gateway processes that know the same backends agree on every order without
sharing anything: there is no table, hence nothing that grows.

The key is hashed once (blake2b, the same in every process, unlike Python's `hash`); each
backend's name once, when the pool is built (`node_seed`: an odd 64-bit number). A backend's
draw for a key is the product of the two modulo 2**64, multiply-mod hashing: one integer
multiplication per backend instead of a hash per backend (a keyed blake2b per backend cost
about 3 us each, a tenth of a small request's whole cost in the gateway), and for a random key
each backend's draw is uniform, so each wins its weight's share.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

_MASK = (1 << 64) - 1
_SCALE = float(1 << 64)


def node_seed(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") | 1


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def score(key: int, seed: int, weight: float) -> float:
    unit = (((key * seed) & _MASK) + 0.5) / _SCALE  # uniform in (0, 1)
    return -weight / math.log(unit)


def order_by_seeds(
    key: str, seeds: Sequence[int], weights: Sequence[float] | None = None
) -> list[int]:
    """Indexes of the nodes, best first. `weights` None: all equal, and then the draw itself
    orders as the score would, without the logarithm."""
    hashed = key_hash(key)
    if weights is None:
        ranked: list[tuple[float, int]] = sorted(
            [((hashed * seed) & _MASK, index) for index, seed in enumerate(seeds)]
        )
    else:
        pairs = enumerate(zip(seeds, weights, strict=True))
        ranked = sorted([(score(hashed, seed, weight), index) for index, (seed, weight) in pairs])
    return [index for _, index in reversed(ranked)]


def rendezvous_order(key: str, nodes: Sequence[tuple[str, float]]) -> list[int]:
    """Indexes of `nodes` (name, weight), best first, for the conversation `key`."""
    seeds = [node_seed(name) for name, _ in nodes]
    weights = [weight for _, weight in nodes]
    return order_by_seeds(key, seeds, None if len(set(weights)) == 1 else weights)
