"""Placement-group resources: how a bundle's resources are renamed, as in Ray.

Here, not in ``node.placement_groups``, because both sides use it: the user's
``placement_group()`` checks bundles and ``options()`` renames a request before
anything is sent, and the node reserves the renamed resources.

Reserving bundle ``i`` of group ``g`` on a node takes the bundle's resources
(``{"CPU": 2}``) from that node's ledger and adds, for every resource ``R`` of the
bundle, ``R_group_<i>_<g>`` and ``R_group_<g>`` with the same amounts, plus
``bundle_group_<i>_<g>`` and ``bundle_group_<g>`` (``BUNDLE_UNIT`` each) so that a
task asking for no resources can still be placed in a bundle. A task or actor in
the group asks for the renamed resources instead of its own (``rewrite``), so the
ordinary schedulers place it on a node holding one of the group's bundles and take
the amounts from the bundle, never from the node's free pool.

A request for bundle ``i`` asks for both ``R_group_<i>_<g>`` and ``R_group_<g>``:
the wildcard counts what the group has left in total, so work in a named bundle and
work in "any bundle" (``-1``) never oversubscribe the group together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "STRATEGIES",
    "BUNDLE_UNIT",
    "BUNDLE_REQUEST",
    "bundle_resources",
    "check_bundles",
    "group_of",
    "rewrite",
]

#: What one bundle adds of ``bundle_group_*`` (Ray's 1000) ...
BUNDLE_UNIT = 1000.0
#: ... and what a task in the group asks of it (Ray's 0.001).
BUNDLE_REQUEST = 0.001

_MARK = "_group_"

#: Ray's four placement strategies (``node.placement_groups._policy``).
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def bundle_resources(pg_hex: str, index: int, bundle: Mapping[str, float]) -> dict[str, float]:
    """The renamed resources a reserved bundle adds to its node."""
    out: dict[str, float] = {}
    for name, amount in bundle.items():
        if amount:
            out[f"{name}{_MARK}{index}_{pg_hex}"] = float(amount)
            out[f"{name}{_MARK}{pg_hex}"] = float(amount)
    out[f"bundle{_MARK}{index}_{pg_hex}"] = BUNDLE_UNIT
    out[f"bundle{_MARK}{pg_hex}"] = BUNDLE_UNIT
    return out


def rewrite(resources: Mapping[str, float], pg_hex: str, index: int) -> dict[str, float]:
    """The request of a task or actor in bundle ``index`` of group ``pg_hex``
    (``-1``: any bundle)."""
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not amount:
            continue
        out[f"{name}{_MARK}{pg_hex}"] = float(amount)
        if index >= 0:
            out[f"{name}{_MARK}{index}_{pg_hex}"] = float(amount)
    if index >= 0:
        out[f"bundle{_MARK}{index}_{pg_hex}"] = BUNDLE_REQUEST
    else:
        out[f"bundle{_MARK}{pg_hex}"] = BUNDLE_REQUEST
    return out


def group_of(resources: Mapping[str, float]) -> str | None:
    """The placement group (hex) a request is in, or None (not on any hot path:
    only for requests that the node cannot satisfy now)."""
    for name in resources:
        if name.startswith("bundle" + _MARK):
            return name.rpartition("_")[2]
    return None


def check_bundles(bundles: Any) -> list[dict[str, float]]:
    """Ray's validation of ``placement_group(bundles)``: a non-empty list of
    non-empty dicts of resource name -> non-negative number, each asking for
    something. Returns them as plain dicts of floats (zero amounts dropped)."""
    if not isinstance(bundles, list | tuple) or not bundles:
        raise ValueError(
            f"placement_group: bundles={bundles!r} must be a non-empty list of dicts "
            "(resource name -> amount), e.g. [{'CPU': 1}, {'CPU': 1}]")
    out = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping) or not bundle:
            raise ValueError(
                f"placement_group: bundle {i} ({bundle!r}) must be a non-empty dict of "
                "resource name -> amount")
        clean: dict[str, float] = {}
        for name, amount in bundle.items():
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"placement_group: bundle {i}: resource name {name!r} must be a "
                    "non-empty str")
            if _MARK in name:
                raise ValueError(
                    f"placement_group: bundle {i}: resource name {name!r} is reserved "
                    f"(names with {_MARK!r} are placement-group resources)")
            if (isinstance(amount, bool) or not isinstance(amount, int | float)
                    or math.isnan(amount) or math.isinf(amount)):
                raise ValueError(
                    f"placement_group: bundle {i}: {name}={amount!r} must be a number")
            if amount < 0:
                raise ValueError(
                    f"placement_group: bundle {i}: {name}={amount!r} cannot be negative")
            if amount:
                clean[name] = float(amount)
        if not clean:
            raise ValueError(
                f"placement_group: bundle {i} ({dict(bundle)!r}) asks for no resources: "
                "a bundle must reserve at least one resource with an amount above 0")
        out.append(clean)
    return out
