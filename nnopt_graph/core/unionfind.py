"""Disjoint sets over hashable keys: the one union-find the analyses and passes share.

Written here rather than taken from networkx: the callers join keys one pair at a time
while they walk the graph and ask for roots in between, which networkx's
``utils.UnionFind`` also does but with recursion-free path compression only on ``find``
and a per-call ``union(*objects)`` that re-roots by weight; this one is the same idea in
a few lines without the dependency (networkx is not otherwise needed: see
docs/architecture.md).
"""

from __future__ import annotations

__all__ = ["UnionFind"]

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class UnionFind(Generic[K]):
    """Disjoint sets; a key seen for the first time is its own set."""

    def __init__(self) -> None:
        self._parent: dict[K, K] = {}

    def find(self, key: K) -> K:
        """The representative of ``key``'s set."""
        parent = self._parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(self, first: K, *others: K) -> None:
        """Join the sets of all the given keys."""
        root = self.find(first)
        for other in others:
            other_root = self.find(other)
            if other_root != root:
                self._parent[other_root] = root

    def union_all(self, keys: Iterable[K]) -> None:
        """Join the sets of every key in ``keys`` (nothing for an empty iterable)."""
        items = list(keys)
        if items:
            self.union(*items)
