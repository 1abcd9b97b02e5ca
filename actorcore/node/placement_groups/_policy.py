"""Where a placement group's bundles go: a pure function of the bundles, the
strategy and the nodes' free resources (Ray's four strategies).

- ``STRICT_PACK``: every bundle on one node (the local one if it can, else the
  one with the most free CPU).
- ``PACK``: on one node if any can hold them all, else as few nodes as possible
  (first fit, the node with the most free resources first).
- ``STRICT_SPREAD``: each bundle on a different node (the largest bundles first,
  each on the node that fits it with the most free CPU and no bundle yet).
- ``SPREAD``: each bundle on the node with the fewest bundles of this group so far
  that can hold it (best effort: several on one node when nodes run out).

``None``: no placement with the resources free now (the group stays pending).
Placement is all or nothing; the reservation that follows it is too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...protocol._placement import STRATEGIES
from ..local_scheduler._ledger import fits

__all__ = ["place_bundles"]


def _add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def _take(free: dict[str, float], need: Mapping[str, float]) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def place_bundles(bundles: Sequence[Mapping[str, float]], strategy: str,
                  nodes: Mapping[str, Mapping[str, float]],
                  local: str | None = None) -> dict[int, str] | None:
    """Bundle index -> node id, or None. ``nodes``: node id -> free resources."""
    free = {nid: dict(avail) for nid, avail in nodes.items()}

    def roomiest(ids: Sequence[str]) -> list[str]:
        # The local node first among equals (no hop), then the most free CPU.
        return sorted(ids, key=lambda n: (-free[n].get("CPU", 0.0), n != local, n))

    if strategy in ("STRICT_PACK", "PACK"):
        total: dict[str, float] = {}
        for b in bundles:
            total = _add(total, b)
        whole = [n for n in free if fits(total, free[n])]
        if whole:
            best = local if local in whole else roomiest(whole)[0]
            return {i: best for i in range(len(bundles))}
        if strategy == "STRICT_PACK":
            return None
        out: dict[int, str] = {}
        order = roomiest(list(free))
        for i, b in enumerate(bundles):
            # Nodes already used first: as few nodes as possible.
            used = [n for n in order if n in out.values()]
            for n in used + [n for n in order if n not in used]:
                if fits(b, free[n]):
                    out[i] = n
                    _take(free[n], b)
                    break
            else:
                return None
        return out
    if strategy == "STRICT_SPREAD":
        out = {}
        taken: set[str] = set()
        by_size = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
        for i in by_size:
            cands = [n for n in free if n not in taken and fits(bundles[i], free[n])]
            if not cands:
                return None
            n = roomiest(cands)[0]
            out[i] = n
            taken.add(n)
            _take(free[n], bundles[i])
        return out
    if strategy == "SPREAD":
        out = {}
        count: dict[str, int] = {n: 0 for n in free}
        for i, b in enumerate(bundles):
            cands = [n for n in free if fits(b, free[n])]
            if not cands:
                return None
            n = min(cands, key=lambda n: (count[n], -free[n].get("CPU", 0.0), n != local, n))
            out[i] = n
            count[n] += 1
            _take(free[n], b)
        return out
    raise ValueError(f"placement strategy {strategy!r}: must be one of {', '.join(STRATEGIES)}")
