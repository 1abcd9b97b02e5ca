"""``actorcore chaos``: the fault harness against a running cluster, from a shell.

::

    actorcore chaos kill worker --every 2s --for 60s --seed 1
    actorcore chaos crash 'node:*/local_scheduler' --every 5s --for 30s
    actorcore chaos kill node:3fa2                  # once
    actorcore chaos partition node:3fa2 node:77c1 --for 10s
    actorcore chaos delay worker node:3fa2 --ms 50 --jitter-ms 50 --for 30s
    actorcore chaos drop node:3fa2 gcs --p 0.2      # left in place until `heal`
    actorcore chaos schedule --seed 7 --kinds crash,kill,partition --rate 0.5 --for 60s
    actorcore chaos heal

Every fault it injects is printed as it happens (time, kind, target, what the node
did). A link fault with ``--for`` is healed when the time is up or on Ctrl-C; without
``--for`` it stays until ``actorcore chaos heal``.

Targets of ``kill`` and ``crash``: a pid, a tree path (``node:<id prefix>/...``), a
``fnmatch`` pattern of such paths, or one of the words ``worker`` (any worker
process), ``actor`` (any actor below a worker), ``replica`` (any GCS replica) and
``node`` (any node but the head).
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import time
from typing import Any

__all__ = ["add_parser", "parse_duration"]

WORDS = {
    "worker": "node:*/worker_pool/worker_*",
    "actor": "node:*/worker_pool/worker_*/*",
    "replica": "node:*/gcs/shard_*/replica_*",
}


def parse_duration(text: str) -> float:
    """``"2s"``, ``"500ms"``, ``"1.5m"``, ``"3"`` (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 2s, 500ms, 1m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def _out(line: str) -> None:
    print(line, flush=True)


class _Printer:
    """Prints the record's new entries, times relative to the command's start."""

    def __init__(self) -> None:
        self.since = time.time()
        self.seen = 0

    def __call__(self) -> None:
        from ..testing.faults import record

        entries = record()
        for entry in entries[self.seen:]:
            _out(entry.line(self.since))
        self.seen = len(entries)


def _targets(h: Any, kind: str, target: str) -> list[str | int]:
    from ..testing.faults import live_targets

    if target.isdigit():
        return [int(target)]
    if target == "node":
        tree = h.tree()
        return sorted(f"node:{str(n['node_id'])[:8]}" for n in tree.get("children") or ()
                      if n.get("node_id") and not n.get("head") and n.get("state") != "unreachable")
    pattern = WORDS.get(target, target)
    if not any(c in pattern for c in "*?["):
        return [pattern]  # one path: the node says if there is no such thing
    return list(live_targets(h, kind, [pattern]))


def cmd_chaos(args: argparse.Namespace) -> int:
    from ..testing.faults import Faults
    from ..testing.faults._inject import where

    h = Faults(args.address)
    printed = _Printer()
    action = args.chaos
    if action == "heal":
        done = h.heal_all()
        printed()
        _out(f"healed every link fault on {where(done)}")
        return 0
    if action in ("kill", "crash"):
        return _repeat(h, args, printed)
    if action == "schedule":
        from ..testing.faults import schedule

        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        s = schedule(args.seed, kinds, rate=args.rate, duration=args.duration,
                     address=args.address, hold=args.hold)
        try:
            while True:
                try:
                    s.join(timeout=0.5)
                    break
                except TimeoutError:
                    printed()
        except KeyboardInterrupt:
            s.stop()
        printed()
        _out(f"schedule seed {args.seed}: {s.summary()}")
        return 0
    a, b = args.a, args.b
    if action == "partition":
        fault = h.partition(a, b)
    elif action == "drop":
        fault = h.drop(args.p, a, b)
    elif action == "duplicate":
        fault = h.duplicate(args.p, a, b)
    else:
        fault = h.delay(args.ms / 1000.0, args.jitter_ms / 1000.0, a, b)
    printed()
    if args.duration is None:
        _out(f"{fault.kind} stays until `actorcore chaos heal` (tag {fault.tag})")
        return 0
    try:
        time.sleep(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        fault.heal()
        printed()
    return 0


def _repeat(h: Any, args: argparse.Namespace, printed: _Printer) -> int:
    """``kill``/``crash`` once, or ``--every`` period ``--for`` a while, a seeded
    choice among the live targets each time."""
    rng = random.Random(args.seed)
    kind = args.chaos
    # Steps at fixed times (start + k * every, while before start + duration), not a
    # sleep after each: a step that takes long (a loaded machine) delays the next,
    # never drops it, so "--every 0.4s --for 1s" is three steps.
    start = time.monotonic()
    deadline = start + (args.duration or 0.0)
    sig = signal.Signals[f"SIG{args.signal.upper().removeprefix('SIG')}"]
    step = 0
    failures = 0
    try:
        while True:
            pick = rng.random()
            targets = _targets(h, kind, args.target)
            if not targets:
                _out(f"no live target matches {args.target!r}")
                failures += 1
            else:
                target = targets[int(pick * len(targets))]
                try:
                    if kind == "kill":
                        h.kill(target, sig, seed=args.seed, step=step)
                    else:
                        h.crash(str(target), seed=args.seed, step=step)
                except (ValueError, LookupError) as exc:
                    failures += 1
                    if args.every is None:
                        printed()
                        print(f"actorcore chaos: {exc}", file=sys.stderr)
                        return 1
                printed()
            step += 1
            if args.every is None:
                break
            due = start + step * args.every
            if due >= deadline:
                break
            time.sleep(max(0.0, due - time.monotonic()))
    except KeyboardInterrupt:
        pass
    _out(f"{kind}: {step - failures} injected, {failures} failed")
    return 0 if step > failures else 1


def add_parser(sub: Any) -> None:
    """``actorcore chaos ...`` (see the module docstring)."""
    c = sub.add_parser("chaos", help="inject faults into a running cluster",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--address", help="the cluster (default: the one on this machine)")
    cs = c.add_subparsers(dest="chaos", required=True)
    for name in ("kill", "crash"):
        k = cs.add_parser(name, help=f"{name} a process or component (pid, path, pattern, "
                          "worker, actor, replica, node)")
        k.add_argument("target")
        k.add_argument("--every", type=parse_duration, default=None,
                       help="repeat with this period (e.g. 2s)")
        k.add_argument("--for", dest="duration", type=parse_duration, default=None,
                       help="repeat for this long (with --every)")
        k.add_argument("--seed", type=int, default=0, help="seed of the target choices")
        if name == "kill":
            k.add_argument("--signal", default="KILL", help="signal name (KILL, TERM, ...)")
        else:
            k.set_defaults(signal="KILL")
    for name in ("partition", "drop", "delay", "duplicate"):
        k = cs.add_parser(name, help=f"{name} the link between endpoints A and B "
                          "(node:<prefix>, gcs, driver, worker, worker_<n>, a name pattern)")
        k.add_argument("a")
        k.add_argument("b")
        k.add_argument("--for", dest="duration", type=parse_duration, default=None,
                       help="heal after this long (default: until `chaos heal`)")
        if name in ("drop", "duplicate"):
            k.add_argument("--p", type=float, default=1.0, help="probability per message")
        if name == "delay":
            k.add_argument("--ms", type=float, default=50.0, help="delay in milliseconds")
            k.add_argument("--jitter-ms", type=float, default=0.0, help="extra random delay")
    k = cs.add_parser("schedule", help="a seeded schedule of faults of several kinds")
    k.add_argument("--seed", type=int, required=True)
    k.add_argument("--kinds", default="crash,kill,drop,delay,duplicate,partition")
    k.add_argument("--rate", type=float, default=0.5, help="faults per second")
    k.add_argument("--for", dest="duration", type=parse_duration, default=60.0)
    k.add_argument("--hold", type=parse_duration, default=0.5,
                   help="how long each link fault lasts")
    cs.add_parser("heal", help="remove every link fault from the cluster")
    c.set_defaults(fn=cmd_chaos)
