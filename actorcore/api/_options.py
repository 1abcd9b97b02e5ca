"""Validation of ``@remote(...)`` and ``.options(...)`` arguments.

Options are checked once, where the user writes them, and every bad value gets an
error naming the option and the value. The result is a plain dict that the task
(and, later, actor) submission paths read without re-checking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..protocol._ids import DYNAMIC, STREAMING
from ._placement_group import PlacementGroupHandle
from ._runtime_env import validate_runtime_env
from ._strategies import PlacementGroupSchedulingStrategy

__all__ = [
    "TASK_OPTIONS",
    "ACTOR_OPTIONS",
    "validate_task_options",
    "validate_actor_options",
    "resources_of",
    "DEFAULT_MAX_RETRIES",
    "check_num_returns",
    "num_returns_code",
]

DEFAULT_MAX_RETRIES = 3

_COMMON = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "name",
    "scheduling_strategy",
    "runtime_env",
    "accelerator_type",
    "label_selector",
    # Ray's legacy spelling of PlacementGroupSchedulingStrategy.
    "placement_group",
    "placement_group_bundle_index",
    "placement_group_capture_child_tasks",
}
TASK_OPTIONS = frozenset(_COMMON | {"num_returns", "max_retries", "retry_exceptions",
                                    "max_calls"})
ACTOR_OPTIONS = frozenset(
    _COMMON
    | {
        "namespace",
        "lifetime",
        "max_restarts",
        "max_task_retries",
        "max_concurrency",
        "max_pending_calls",
        "get_if_exists",
        "concurrency_groups",
        "placement",
        "supervisor",
        "checkpoint_interval",
    }
)

_RESERVED_RESOURCES = ("CPU", "GPU", "memory")

# Ray options that are accepted so that Ray programs run unchanged, but only with the
# values that mean "nothing special": anything else would be silently ignored, so it is
# refused with an error naming the option instead.
_NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "scheduling_strategy": (None, "DEFAULT", "SPREAD"),
    "accelerator_type": (None,),
    "label_selector": (None, {}),
}


def _check_neutral(options: Mapping[str, Any], skip: tuple[str, ...] = ()) -> None:
    for key, neutral in _NEUTRAL_VALUES.items():
        if key in skip or (key == "scheduling_strategy" and _is_pg_strategy(options.get(key))):
            continue
        if key in options and not any(options[key] == v for v in neutral):
            allowed = ", ".join(repr(v) for v in neutral)
            raise ValueError(
                f"option {key}={options[key]!r} is not supported by actorcore "
                f"(accepted for Ray compatibility only as: {allowed})"
            )


def _is_pg_strategy(value: Any) -> bool:
    return isinstance(value, PlacementGroupSchedulingStrategy)


def placement_of(options: Mapping[str, Any]) -> tuple[Any, int] | None:
    """The placement group and bundle index the options ask for (the strategy, or
    Ray's legacy ``placement_group=`` / ``placement_group_bundle_index=``), checked:
    ``(group, index)`` or None. Refuses what is not built (capturing child tasks)."""
    strategy: Any = options.get("scheduling_strategy")
    if _is_pg_strategy(strategy):
        if options.get("placement_group") not in (None, "default"):
            raise ValueError("options scheduling_strategy and placement_group cannot both "
                             "be given")
        pg = strategy.placement_group
        index = strategy.placement_group_bundle_index
        capture = strategy.placement_group_capture_child_tasks
    else:
        pg = options.get("placement_group")
        if pg == "default":
            pg = None
        index = options.get("placement_group_bundle_index", -1)
        capture = options.get("placement_group_capture_child_tasks")
        if pg is None:
            if index not in (None, -1):
                raise ValueError(f"option placement_group_bundle_index={index!r} needs a "
                                 "placement group")
            if capture:
                raise ValueError("option placement_group_capture_child_tasks=True needs "
                                 "a placement group")
            return None
    if capture:
        raise ValueError("placement_group_capture_child_tasks=True is not supported by "
                         "actorcore (give the child tasks the placement group explicitly)")
    if not isinstance(pg, PlacementGroupHandle):
        raise TypeError(f"placement group option: expected a PlacementGroup, got {pg!r}")
    if index is None:
        index = -1
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"placement_group_bundle_index={index!r} must be an int")
    bundles = pg.bundle_specs
    if not -1 <= index < len(bundles):
        raise ValueError(
            f"placement_group_bundle_index={index} is out of range: the placement group "
            f"{pg.id.hex()} has {len(bundles)} bundle{'s' if len(bundles) != 1 else ''} "
            f"(valid: -1 .. {len(bundles) - 1})")
    return pg, index


def _check_fits_group(what: str, need: Mapping[str, float], pg: Any, index: int) -> None:
    # As Ray: a request no bundle of the group could ever hold is an error at once.
    bundles = pg.bundle_specs
    candidates = bundles if index < 0 else [bundles[index]]
    if not any(all(b.get(k, 0.0) >= v - 1e-9 for k, v in need.items()) for b in candidates):
        where = "any bundle" if index < 0 else f"bundle {index}"
        raise ValueError(
            f"{what} requests {dict(need)} which cannot fit into {where} of placement "
            f"group {pg.id.hex()} (bundles: {bundles})")


def _check_number(name: str, value: Any, *, integral: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"option {name}={value!r}: expected a number, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"option {name}={value!r}: must be a non-negative number")
    if integral and value != int(value):
        raise ValueError(f"option {name}={value!r}: must be a whole number")


def _check_resources(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"option resources={value!r}: expected a dict of name -> amount")
    for key, amount in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"option resources: resource name {key!r} must be a non-empty str")
        if key in _RESERVED_RESOURCES:
            raise ValueError(
                f"option resources: use num_cpus/num_gpus/memory instead of resources[{key!r}]"
            )
        _check_number(f"resources[{key!r}]", amount)


def _validate_common(options: Mapping[str, Any], allowed: frozenset[str], what: str,
                     supported: tuple[str, ...] = ()) -> dict:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} for {what}: "
            f"{', '.join(unknown)} (valid: {', '.join(sorted(allowed))})"
        )
    _check_neutral(options, supported)
    out = dict(options)
    if "runtime_env" in options:
        out["runtime_env"] = validate_runtime_env(options["runtime_env"], "option")
    for key in ("num_cpus", "num_gpus", "memory"):
        if options.get(key) is not None:
            _check_number(key, options[key])
    g = options.get("num_gpus")
    if g is not None and g > 1 and g != int(g):
        raise ValueError(
            f"option num_gpus={g!r}: more than one GPU must be a whole number "
            "(a fraction shares one GPU)")
    if options.get("resources") is not None:
        _check_resources(options["resources"])
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"option name={name!r}: expected a str")
    placement_of(out)  # a bad placement group option fails here
    return out


def validate_task_options(options: Mapping[str, Any]) -> dict:
    """Check the options of a remote function; return them as a fresh dict."""
    out = _validate_common(options, TASK_OPTIONS, "a remote function",
                           supported=("scheduling_strategy",))
    if "scheduling_strategy" in out:
        from ..protocol._strategy import strategy_of

        strategy_of(out["scheduling_strategy"])  # a ValueError naming a bad one
    nr = out.get("num_returns")
    if nr is not None:
        check_num_returns(nr, "option")
    mr = out.get("max_retries")
    if mr is not None:
        if isinstance(mr, bool) or not isinstance(mr, int) or mr < -1:
            raise ValueError(f"option max_retries={mr!r}: must be an int >= -1 (-1: infinite)")
    mcalls = out.get("max_calls")
    if mcalls is not None and (isinstance(mcalls, bool) or not isinstance(mcalls, int)
                               or mcalls < 0):
        raise ValueError(f"option max_calls={mcalls!r}: must be an int >= 0 (0: no limit)")
    re = out.get("retry_exceptions")
    if re is not None and not isinstance(re, bool):
        seq = list(re) if isinstance(re, list | tuple) else None
        if not seq or not all(isinstance(t, type) and issubclass(t, BaseException) for t in seq):
            raise TypeError(
                f"option retry_exceptions={re!r}: expected a bool or a list of exception types"
            )
    return out


_GENERATOR_RETURNS = {"streaming": STREAMING, "dynamic": DYNAMIC}


def check_num_returns(nr: Any, where: str) -> None:
    """Refuse a ``num_returns`` that is neither an int >= 0 nor a generator's
    ``"streaming"`` / ``"dynamic"``; ``where`` names the place (``option``, ...)."""
    if isinstance(nr, str):
        if nr not in _GENERATOR_RETURNS:
            raise ValueError(
                f"{where} num_returns={nr!r}: must be an int >= 0, 'streaming' or 'dynamic'")
    elif isinstance(nr, bool) or not isinstance(nr, int) or nr < 0:
        raise ValueError(
            f"{where} num_returns={nr!r}: must be an int >= 0, 'streaming' or 'dynamic'")


def num_returns_code(nr: Any) -> int:
    """``num_returns`` as a spec carries it: the count, or ``STREAMING`` / ``DYNAMIC``."""
    if nr is None:
        return 1
    if isinstance(nr, str):
        return _GENERATOR_RETURNS[nr]
    return int(nr)


def validate_actor_options(options: Mapping[str, Any]) -> dict:
    """Check the options of a remote class; return them as a fresh dict."""
    out = _validate_common(options, ACTOR_OPTIONS, "an actor class",
                           supported=("scheduling_strategy",))
    if out.get("scheduling_strategy") is not None:
        from ..protocol._strategy import strategy_of

        try:
            strategy_of(out["scheduling_strategy"])
        except ValueError as exc:
            raise ValueError(f"option {exc}") from None
    for key in ("max_restarts", "max_task_retries"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < -1):
            raise ValueError(f"option {key}={v!r}: must be an int >= -1 (-1: infinite)")
    mc = out.get("max_concurrency")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise ValueError(f"option max_concurrency={mc!r}: must be an int >= 1")
    ci = out.get("checkpoint_interval")
    if ci is not None and (isinstance(ci, bool) or not isinstance(ci, int) or ci < 0):
        raise ValueError(
            f"option checkpoint_interval={ci!r}: must be an int >= 1 (a checkpoint every "
            "that many calls), 0 (replay every call, no checkpoints) or None (no replay)")
    mp = out.get("max_pending_calls")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp == 0
                           or mp < -1):
        raise ValueError(
            f"option max_pending_calls={mp!r}: must be an int >= 1, or -1 for no limit")
    groups = out.get("concurrency_groups")
    if groups is not None:
        if not isinstance(groups, Mapping):
            raise TypeError(
                f"option concurrency_groups={groups!r}: expected a dict of group name -> "
                "max concurrency, e.g. {'io': 2}")
        for gname, n in groups.items():
            if not isinstance(gname, str) or not gname:
                raise TypeError(
                    f"option concurrency_groups: group name {gname!r} must be a non-empty str")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(
                    f"option concurrency_groups[{gname!r}]={n!r}: must be an int >= 1")
    lt = out.get("lifetime")
    if lt not in (None, "detached", "non_detached"):
        raise ValueError(f"option lifetime={lt!r}: must be None, 'detached' or 'non_detached'")
    ns = out.get("namespace")
    if ns is not None and not isinstance(ns, str):
        raise TypeError(f"option namespace={ns!r}: expected a str")
    return out


def resources_of(options: Mapping[str, Any], *, default_cpus: float = 1.0) -> dict[str, float]:
    """The resource request of a task or actor as ``{"CPU": .., "GPU": .., ...}``.

    Zero amounts are left out so that two requests compare equal when they ask for
    the same thing. In a placement group, the request is for the group's renamed
    resources (``protocol._placement.rewrite``).
    """
    if ("scheduling_strategy" in options or "placement_group" in options):
        target = placement_of(options)
        if target is not None:
            from ..protocol._placement import rewrite

            pg, index = target
            plain = resources_of({k: v for k, v in options.items()
                                  if k not in ("scheduling_strategy", "placement_group")},
                                 default_cpus=default_cpus)
            _check_fits_group(str(options.get("name") or "the task or actor"), plain, pg, index)
            return rewrite(plain, pg.id.hex(), index)
    cpus = options.get("num_cpus")
    out: dict[str, float] = {}
    c = float(default_cpus if cpus is None else cpus)
    if c:
        out["CPU"] = c
    g = options.get("num_gpus")
    if g:
        out["GPU"] = float(g)
    m = options.get("memory")
    if m:
        out["memory"] = float(m)
    for key, amount in (options.get("resources") or {}).items():
        if amount:
            out[key] = float(amount)
    return out
