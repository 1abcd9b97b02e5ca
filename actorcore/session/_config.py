"""A cluster's configuration, spelled once, and every environment variable we read.

`ClusterConfig` is the one description of what a new cluster can be given. Each of
its fields carries, in its metadata (an `Option`), everything the other spellings
need: the help text, the command line flag, the ``init()`` keyword, the environment
variable (if any), how to read it from text and how to check it. From it derive:

* ``init()``'s checks (`ClusterConfig.from_init`): a bad value raises naming the
  keyword, e.g. ``init(num_cpus=-1): must be a number >= 0``;
* the node's argv (`ClusterConfig.node_argv`), which the launcher passes to
  ``python -m actorcore.node``;
* the node's argparse and the CLI's ``actorcore start`` flags (`add_arguments`,
  then `ClusterConfig.from_namespace`): a bad value is refused by argparse naming
  the flag.

So a new option is one field here; a test checks that every field appears in all
of them. Defaults are the node's: a field left at its default is not put on the
node's command line at all.

`ENVIRONMENT` lists every ``ACTORCORE_*`` variable the project reads (a test keeps
it complete), each with one polarity; `env_value` reads one by the table, refusing
a bad value with an error that names the variable. README's table is this one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..exceptions import ConfigurationError

__all__ = [
    "ENVIRONMENT",
    "ClusterConfig",
    "ConfigurationError",
    "EnvVar",
    "Option",
    "add_arguments",
    "env_value",
    "options",
]

logger = logging.getLogger("actorcore.config")


class _Bad(Exception):
    """Raised by a check with the reason only; the caller names the option."""


class _BadType(_Bad):
    """A value of the wrong Python type (``init()`` raises `TypeError` for it)."""


# --------------------------------------------------------------------- checks


def _number(minimum: float = 0.0, integer: bool = False) -> Callable[[Any], Any]:
    what = "a whole number" if integer else "a number"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(f"expected {what} >= {minimum:g}, got {type(value).__name__}")
        if integer and not (isinstance(value, int) or float(value).is_integer()):
            raise _Bad(f"expected {what} >= {minimum:g}")
        if not math.isfinite(value) or value < minimum:
            raise _Bad(f"must be {what} >= {minimum:g}")
        return int(value) if integer else value

    return check


def _port(value: Any) -> int:
    port = _number(0, integer=True)(value)
    if port > 65535:
        raise _Bad("must be a TCP port in [0, 65535] (0 picks a free one)")
    return int(port)


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _BadType(f"expected a dict of resource name -> amount, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Bad(f"resource names must be non-empty str, got {k!r}")
        if k in ("CPU", "GPU"):
            raise _Bad(f"use num_cpus/num_gpus, not resources[{k!r}]")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise _Bad(f"resources[{k!r}]={v!r} must be a number >= 0")
        out[k] = float(v)
    return out


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a non-empty str, got {value!r}")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise _BadType("expected a path")
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _BadType(f"expected True or False, got {value!r}")
    return value


# Readers of the text form (argv, environment) into the value `check` takes.
def _read_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _Bad("not a number") from None


def _read_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Bad("not a whole number") from None


def _read_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _Bad(f"not JSON ({exc})") from None


@attrs.frozen
class Option:
    """How one `ClusterConfig` field is spelled everywhere, and how it is checked."""

    help: str
    flag: str  # the CLI's and the node's flag
    init: str | None  # the init() keyword (None: not an init() option; ``why_not_init``)
    check: Callable[[Any], Any]  # value -> checked value, raising _Bad(reason)
    read: Callable[[str], Any] | None = None  # text -> value; None: a bare switch
    env: str | None = None  # read by `_security.tls_config` when the option is absent
    why_not_init: str = ""


def _field(default: Any, **option: Any) -> Any:
    return attrs.field(default=default, metadata={"option": Option(**option)})


@attrs.frozen
class ClusterConfig:
    """What a new cluster (its head node) is started with; see the module docstring."""

    num_cpus: float | None = _field(
        None, help="CPUs to schedule on (default: this machine's count)",
        flag="--num-cpus", init="num_cpus", check=_number(), read=_read_float)
    num_gpus: float = _field(
        0.0, help="GPUs to schedule on (default 0)",
        flag="--num-gpus", init="num_gpus", check=_number(), read=_read_float)
    resources: dict[str, float] = _field(
        attrs.Factory(dict), help='custom resources as JSON, e.g. \'{"TPU": 4}\'',
        flag="--resources", init="resources", check=_resources, read=_read_json)
    object_store_memory: int | None = _field(
        None, help="bytes of shared memory for the object store (default: a share of RAM)",
        flag="--object-store-memory", init="object_store_memory",
        check=_number(1, integer=True), read=_read_int)
    spill_dir: str | None = _field(
        None, help="where the store spills objects (default: the session's spill/)",
        flag="--spill-dir", init="object_spilling_directory", check=_path, read=str)
    num_workers: int | None = _field(
        None, help="task worker processes to keep (default: one per CPU)",
        flag="--num-workers", init="num_workers", check=_number(0, integer=True),
        read=_read_int)
    gcs_shards: int = _field(
        1, help="GCS shards (default 1)",
        flag="--gcs-shards", init="gcs_shards", check=_number(1, integer=True), read=_read_int)
    gcs_replicas: int = _field(
        1, help="replicas in each GCS shard's chain (default 1)",
        flag="--gcs-replicas", init="gcs_replicas", check=_number(1, integer=True),
        read=_read_int)
    lineage_cap: int | None = _field(
        None, help="task specs kept for rebuilding lost objects, oldest evicted first "
                   "(default ACTORCORE_GCS_LINEAGE_CAP, 10000)",
        flag="--lineage-cap", init="lineage_cap", check=_number(1, integer=True),
        read=_read_int)
    port: int | None = _field(
        None, help="also listen on TCP (0 picks a port; default: Unix socket only)",
        flag="--port", init=None, check=_port, read=_read_int,
        why_not_init="a driver's embedded cluster serves that driver only (Unix socket)")
    host: str = _field(
        "127.0.0.1", help="the interface of the TCP listeners (default 127.0.0.1)",
        flag="--host", init=None, check=_text, read=str,
        why_not_init="a driver's embedded cluster serves that driver only (Unix socket)")
    tls_cert: str | None = _field(
        None, help="this node's certificate (PEM; see `actorcore tls init`)",
        flag="--tls-cert", init="tls_cert", env="ACTORCORE_TLS_CERT", check=_path, read=str)
    tls_key: str | None = _field(
        None, help="its private key (PEM)",
        flag="--tls-key", init="tls_key", env="ACTORCORE_TLS_KEY", check=_path, read=str)
    tls_ca: str | None = _field(
        None, help="the cluster CA certificate (PEM)",
        flag="--tls-ca", init="tls_ca", env="ACTORCORE_TLS_CA", check=_path, read=str)
    insecure: bool = _field(
        False, help="allow plaintext TCP on a non-loopback --host",
        flag="--insecure", init=None, check=_flag, read=None,
        why_not_init="an embedded cluster listens on loopback only")

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_init(cls, values: Mapping[str, Any]) -> ClusterConfig:
        """From ``init()`` keywords (``None``: not given); a bad value raises
        `ConfigurationError` (a `ValueError`) naming the keyword."""
        given = {}
        for name, option in options().items():
            if option.init is None or values.get(option.init) is None:
                continue
            value = values[option.init]
            given[name] = _checked(option, value, f"init({option.init}={value!r})")
        return cls(**given)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], who: str = "ClusterConfig") -> ClusterConfig:
        """From field names (``None``: not given); errors read ``who(name=value)``."""
        known = options()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"{who}() got unexpected keyword argument(s): {', '.join(unknown)}")
        given = {}
        for name, value in values.items():
            if value is None:
                continue
            given[name] = _checked(known[name], value, f"{who}({name}={value!r})")
        return cls(**given)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> ClusterConfig:
        """From what `add_arguments` parsed (already checked; ``None``: not given)."""
        given = {name: getattr(args, name) for name in options()}
        return cls(**{k: v for k, v in given.items() if v is not None and v is not False})

    # ------------------------------------------------------------ derived forms

    def node_argv(self) -> list[str]:
        """``python -m actorcore.node`` options for every field not at its default."""
        out: list[str] = []
        for field in attrs.fields(type(self)):
            option: Option = field.metadata["option"]
            value = getattr(self, field.name)
            default = field.default
            if hasattr(default, "factory"):  # attrs.Factory(dict)
                default = default.factory()
            if value == default:
                continue
            if option.read is None:  # a switch
                out.append(option.flag)
            elif isinstance(value, dict):
                out += [option.flag, json.dumps(value)]
            else:
                out += [option.flag, str(value)]
        return out

    def tls(self, *, env: Mapping[str, str] | None = None, spelled: str = "flag") -> Any:
        """The `transport.TlsConfig` of ``tls_*`` (else ``ACTORCORE_TLS_*``), or None;
        an incomplete set is refused naming what is missing as ``spelled`` ("flag":
        ``--tls-key``; "init": ``init(tls_key=)``)."""
        from . import _security

        spell = options()
        names = {part: (f"init({spell['tls_' + part].init}=)" if spelled == "init"
                        else spell["tls_" + part].flag) for part in ("cert", "key", "ca")}
        return _security.tls_config(self.tls_cert, self.tls_key, self.tls_ca, env=env,
                                    names=names)


def options() -> dict[str, Option]:
    """Field name -> its `Option`, in declaration order."""
    return {f.name: f.metadata["option"] for f in attrs.fields(ClusterConfig)}


def _checked(option: Option, value: Any, label: str) -> Any:
    try:
        return option.check(value)
    except _BadType as exc:
        raise TypeError(f"{label}: {exc}") from None
    except _Bad as exc:
        raise ConfigurationError(f"{label}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per `ClusterConfig` field (default ``None``: not given); argparse
    refuses a bad value naming the flag (``argument --num-cpus: must be ...``)."""
    for name, option in options().items():
        if option.read is None:
            parser.add_argument(option.flag, dest=name, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, dest=name, type=_argparse_type(option),
                                default=None, help=option.help,
                                metavar=name.upper().removeprefix("TLS_"))


def _argparse_type(option: Option) -> Callable[[str], Any]:
    read = option.read
    assert read is not None

    def parse(text: str) -> Any:
        try:
            return option.check(read(text))
        except _Bad as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None

    parse.__name__ = option.flag  # argparse names the type in some messages
    return parse


# ---------------------------------------------------------------- environment


@attrs.frozen
class EnvVar:
    """One environment variable the project reads."""

    name: str
    kind: str  # "switch" (0 or 1), "int", "float", "fraction" (in [0, 1]), "path", "text",
    #            "address", "token", "bytes"
    default: str | None
    help: str
    minimum: float = 0.0
    deprecated_for: str | None = None  # an alias of that variable, with inverted polarity
    ray_name: str | None = None  # Ray's name for it, read (by the same kind) when ours is unset


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar("ACTORCORE_TMPDIR", "path", "/tmp/actorcore-sessions",
           "where session directories (sockets, token, logs) live; init(_temp_dir=) sets it"),
    EnvVar("ACTORCORE_ADDRESS", "address", None,
           "the cluster init() joins when it gets no address"),
    EnvVar("ACTORCORE_TOKEN", "token", None,
           "the cluster token (hex) for joining a cluster of another session; set by the "
           "node for its workers"),
    EnvVar("ACTORCORE_TLS_CERT", "path", None, "--tls-cert / init(tls_cert=) when not given"),
    EnvVar("ACTORCORE_TLS_KEY", "path", None, "--tls-key / init(tls_key=) when not given"),
    EnvVar("ACTORCORE_TLS_CA", "path", None, "--tls-ca / init(tls_ca=) when not given"),
    EnvVar("ACTORCORE_DIRECT_CALLS", "switch", "1",
           "0: every actor call and every result goes through the node (no direct links "
           "between callers and actors, no results pushed straight to the driver)"),
    EnvVar("ACTORCORE_DIRECT_TASKS", "switch", "1",
           "1: a driver leases workers from its node and pushes its tasks straight to "
           "them (direct task submission: see core_worker._leased_tasks); "
           "0: every task goes through the node's queue"),
    EnvVar("ACTORCORE_THREAD_READS", "switch", "1",
           "0: an actor's thread never reads its caller's direct link itself (every call "
           "is read by its process's loop and handed to the thread, see "
           "worker._threaded_host._LinkInbox), a task worker's main thread never reads "
           "its tasks off its links nor writes their ends itself (worker._main_inbox), "
           "and its other executor threads never write their tasks' ends "
           "(worker._task_ends)"),
    EnvVar("ACTORCORE_CALLER_READS", "switch", "1",
           "0: a thread blocked in get never reads the answer of a direct actor call or "
           "leased task off its link itself (the process's loop reads it and wakes the "
           "thread, see core_worker._reply_reads)"),
    EnvVar("ACTORCORE_NO_DIRECT", "switch", None,
           "deprecated: ACTORCORE_NO_DIRECT=1 means ACTORCORE_DIRECT_CALLS=0",
           deprecated_for="ACTORCORE_DIRECT_CALLS"),
    EnvVar("ACTORCORE_MAX_FRAME_SIZE", "int", None,
           "the largest frame a process accepts, bytes (default the transport's 512 MiB)",
           minimum=1),
    EnvVar("ACTORCORE_IDLE_WORKER_TIMEOUT", "float", "10",
           "seconds an idle worker beyond the pool's size lives"),
    EnvVar("ACTORCORE_WORKER_START_TIMEOUT", "float", "60",
           "seconds a worker or actor process has to connect after it is started"),
    EnvVar("ACTORCORE_WORKER_ZYGOTE", "switch", "1",
           "0: every worker and actor process is spawned (python -m actorcore.worker) "
           "instead of forked from the node's zygote, which has their imports done"),
    EnvVar("ACTORCORE_WORKER_ZYGOTE_AT_START", "switch", "1",
           "0: the node's first zygote is spawned (python -m actorcore.worker._zygote) "
           "once the node has started, instead of forked from the node process at its "
           "start, before the node's own imports"),
    EnvVar("ACTORCORE_MAX_STARTING_WORKERS", "int", None,
           "processes started at once (default: the cores, at least 1)", minimum=1),
    EnvVar("ACTORCORE_MEMORY_USAGE_THRESHOLD", "fraction", "0.95",
           "the share of the machine's memory (or its cgroup's) in use above which no "
           "actor process is started (Ray's RAY_memory_usage_threshold works too)",
           ray_name="RAY_memory_usage_threshold"),
    EnvVar("ACTORCORE_LOW_MEMORY_POLICY", "text", "fail",
           "what an actor start does above that threshold: fail (its actors die with "
           "ActorOutOfMemoryError) or wait (until memory use is below it)"),
    EnvVar("ACTORCORE_MEMORY_MONITOR_REFRESH_MS", "float", "250",
           "milliseconds a memory reading is reused; 0 turns the memory check off "
           "(Ray's RAY_memory_monitor_refresh_ms works too)",
           ray_name="RAY_memory_monitor_refresh_ms"),
    EnvVar("ACTORCORE_OBJECT_STORE_DISK_FALLBACK", "switch", "1",
           "0: a put that does not fit in memory fails instead of going to disk"),
    EnvVar("ACTORCORE_LOCAL_FS_CAPACITY_THRESHOLD", "float", "0.95",
           "the fraction of the disk spills and disk objects may fill"),
    EnvVar("ACTORCORE_OBJECT_STORE_PREFAULT", "bytes", None,
           "bytes of the store's arena touched at start ('all' for every byte); a "
           "driver maps as many (at most 256 MiB with 'all') into its own process at "
           "`init()`, `0` turns both off"),
    EnvVar("ACTORCORE_STORE_RECOVERY_GRACE", "float", "30",
           "seconds a restarted store waits for its clients to claim their objects"),
    EnvVar("ACTORCORE_GCS_LINEAGE_CAP", "int", "10000",
           "marked lineage entries each GCS shard keeps in memory, and task specs each "
           "node keeps for rebuilding lost objects (`init(lineage_cap=)` / "
           "`--lineage-cap` when given)"),
    EnvVar("ACTORCORE_ENABLE_AUTO_CONNECT", "switch", "1",
           "0: the first API call without init() raises instead of calling init() "
           "(Ray's RAY_ENABLE_AUTO_CONNECT=0 works too)"),
    EnvVar("ACTORCORE_IGNORE_UNHANDLED_ERRORS", "switch", "0",
           "1: no 'Unhandled error' log line for a failed ref nobody read "
           "(Ray's RAY_IGNORE_UNHANDLED_ERRORS works too)"),
    EnvVar("ACTORCORE_HEARTBEAT_INTERVAL", "float", "0.5",
           "seconds between a node's heartbeats to the GCS", minimum=0.01),
    EnvVar("ACTORCORE_NODE_TIMEOUT", "float", "10",
           "seconds without a heartbeat before the head declares a node dead "
           "(at least three heartbeats)", minimum=0.03),
    EnvVar("ACTORCORE_TRANSFER_CHUNK", "int", "524288",
           "bytes per chunk of an object pulled from another node", minimum=4096),
    EnvVar("ACTORCORE_TRANSFER_WINDOW", "int", "16",
           "chunks of one pull in flight at once", minimum=1),
    EnvVar("ACTORCORE_SESSION_DIR", "path", None,
           "set by the node for its workers: its session directory (runtime_env "
           "packages are unpacked under it)"),
    EnvVar("ACTORCORE_PROFILE_NODE", "path", None,
           "a development aid: write cProfile stats of the node's main thread there"),
)

_BY_NAME = {v.name: v for v in ENVIRONMENT}


def env_value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of ``name`` (a variable of `ENVIRONMENT`) read by its kind, else its
    default; a bad value raises `ConfigurationError` naming the variable.

    ``switch``: a bool ("0" or "1"); ``int``/``float``: a number >= its minimum;
    ``fraction``: a number in [0, 1]; anything else: the text. A deprecated alias set
    instead of its variable counts, inverted, with a warning in the log; Ray's name
    for it (``ray_name``) set instead counts as it, a bad value named by Ray's name.
    """
    var = _BY_NAME[name]
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if (raw is None or raw.strip() == "") and var.ray_name is not None:
        rays = env.get(var.ray_name)
        if rays is not None and rays.strip():
            return _parse_env(attrs.evolve(var, name=var.ray_name), rays)
    if raw is None or raw.strip() == "":
        alias = next((v for v in ENVIRONMENT if v.deprecated_for == name), None)
        if alias is not None and (env.get(alias.name) or "").strip():
            inverted = not _parse_env(alias, env[alias.name])
            logger.warning("%s is deprecated: set %s=%d instead", alias.name, name, inverted)
            return inverted
        raw = var.default
        if raw is None:
            return None
    return _parse_env(var, raw)


def _parse_env(var: EnvVar, raw: str) -> Any:
    text = raw.strip()
    try:
        if var.kind == "switch":
            if text not in ("0", "1"):
                raise _Bad("expected 0 or 1")
            return text == "1"
        if var.kind in ("int", "float"):
            number = _read_int(text) if var.kind == "int" else _read_float(text)
            return _number(var.minimum, integer=var.kind == "int")(number)
        if var.kind == "fraction":
            number = _read_float(text)
            if not 0.0 <= number <= 1.0:
                raise _Bad("must be a fraction in [0, 1]")
            return number
    except _Bad as exc:
        raise ConfigurationError(f"{var.name}={raw!r}: {exc} ({var.help})") from None
    return raw


def env_table() -> str:
    """`ENVIRONMENT` as README's Markdown table."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for v in ENVIRONMENT:
        lines.append(f"| `{v.name}` | {v.default or '-'} | {v.help} |")
    return "\n".join(lines)

