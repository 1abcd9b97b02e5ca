"""What a call is checked against where it is made: a function's or method's
signature as a `MethodMeta`, a class's method table, and the check itself.

A call that could not bind fails in the caller with the ``TypeError`` a local call
would raise, not later in a worker (as in Ray). Remote functions and actor classes
both build their metas here, and handles check calls against them; so this module
sits below all three.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..protocol._actors import BUILTIN_METHODS, ClassMeta, MethodMeta
from ._options import num_returns_code

__all__ = ["check_call_args", "class_meta", "method_meta"]


def method_meta(fn: Any, options: dict[str, Any], bound: bool = True) -> MethodMeta:
    """What callers check a call against (``check_call_args``); ``bound``: ``fn``'s
    first positional parameter (``self``, ``cls``) is not the caller's to give."""
    is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
    num_returns = num_returns_code(options.get("num_returns", 1))
    group = options.get("concurrency_group")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return MethodMeta(num_returns=num_returns, is_async=is_async, pos_names=(),
                          pos_required=0, varargs=True, kw_names=None,
                          concurrency_group=group)
    params = list(sig.parameters.values())
    if bound and params and params[0].kind in (params[0].POSITIONAL_ONLY,
                                               params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]  # self
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kwonly = [p for p in params if p.kind is p.KEYWORD_ONLY]
    return MethodMeta(
        num_returns=num_returns,
        is_async=is_async,
        pos_names=tuple(p.name for p in pos),
        pos_required=sum(1 for p in pos if p.default is p.empty),
        varargs=any(p.kind is p.VAR_POSITIONAL for p in params),
        kw_names=None if any(p.kind is p.VAR_KEYWORD for p in params) else frozenset(
            [p.name for p in pos if p.kind is not p.POSITIONAL_ONLY] + [p.name for p in kwonly]
        ),
        kwonly_required=tuple(p.name for p in kwonly if p.default is p.empty),
        pos_only=sum(1 for p in pos if p.kind is p.POSITIONAL_ONLY),
        concurrency_group=group,
    )


def _no_args(self: Any) -> None:
    pass


def class_meta(cls: type) -> tuple[ClassMeta, MethodMeta]:
    """The method table of ``cls`` and the meta of its constructor.

    Static and class methods are methods too (as in Ray): a call runs them on the
    actor's class, with no instance (``cls`` for a class method).
    """
    methods: dict[str, MethodMeta] = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        raw = inspect.getattr_static(cls, name, None)
        if isinstance(raw, staticmethod | classmethod):
            member, bound = raw.__func__, isinstance(raw, classmethod)
        elif inspect.isfunction(member):
            bound = True
        else:
            continue
        opts = getattr(member, "__actorcore_method_options__", {})
        methods[name] = method_meta(member, opts, bound)
    init = cls.__dict__.get("__init__") or getattr(cls, "__init__")  # noqa: B009
    if init is object.__init__:
        init = _no_args
    ctor = method_meta(init, {})
    is_async = any(m.is_async for m in methods.values())
    for name, meta in BUILTIN_METHODS.items():
        methods.setdefault(name, meta)
    return ClassMeta(cls.__qualname__, cls.__module__, methods, is_async), ctor


def check_call_args(what: str, meta: MethodMeta, args: tuple, kwargs: dict) -> None:
    """Raise ``TypeError`` now if ``what(*args, **kwargs)`` could not bind (the
    checks and messages of a local call: counts, defaults, ``*args``, ``**kwargs``,
    keyword-only and positional-only parameters)."""
    n = len(args)
    if not kwargs:
        if n >= meta.pos_required and (meta.varargs or n <= len(meta.pos_names)) and not (
            meta.kwonly_required
        ):
            return
    names = meta.pos_names
    if not meta.varargs and n > len(names):
        lo, hi = meta.pos_required, len(names)
        takes = f"{hi}" if lo == hi else f"from {lo} to {hi}"
        raise TypeError(
            f"{what}() takes {takes} positional argument{'s' if hi != 1 else ''} "
            f"but {n} {'was' if n == 1 else 'were'} given"
        )
    posonly = names[:meta.pos_only]
    if meta.kw_names is not None:  # no **kwargs: every keyword must name a parameter
        wrong = [k for k in kwargs if k in posonly]
        if wrong:
            raise TypeError(
                f"{what}() got some positional-only arguments passed as keyword "
                f"arguments: {', '.join(repr(k) for k in wrong)}"
            )
        for k in kwargs:
            if k not in meta.kw_names:
                raise TypeError(f"{what}() got an unexpected keyword argument {k!r}")
    for k in kwargs:
        if k in names[meta.pos_only:n]:
            raise TypeError(f"{what}() got multiple values for argument {k!r}")
    # A positional-only parameter is never filled by a keyword (that one goes to
    # **kwargs); the others may be.
    missing = [p for i, p in enumerate(names[n:meta.pos_required], n)
               if i < meta.pos_only or p not in kwargs]
    missing += [k for k in meta.kwonly_required if k not in kwargs]
    if missing:
        raise TypeError(
            f"{what}() missing {len(missing)} required argument"
            f"{'s' if len(missing) != 1 else ''}: {', '.join(repr(m) for m in missing)}"
        )
