"""A cluster's network security settings: TLS material, and plaintext on a network.

One place decides them for every process of a cluster (see ``SECURITY.md``):

* ``tls_config(cert, key, ca)``: the `transport.TlsConfig` from explicit values
  (``actorcore start --tls-cert/--tls-key/--tls-ca``, ``init(tls_cert=...)``), else
  from ``ACTORCORE_TLS_CERT/KEY/CA``; all three or none.
* ``check_listen(host, tls, insecure)``: a non-loopback listener without TLS is
  refused unless ``insecure`` (``--insecure``), with an error that says how to
  enable TLS.
* ``apply(tls, insecure)``: make them this process's default for every TCP link
  (``transport.set_default_tls``); the node passes them on to its GCS replica
  processes, and drivers set them from ``init()``.
* ``argv(tls, insecure)``: the same as ``python -m actorcore.node`` options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import transport

__all__ = ["ENV", "apply", "argv", "check_listen", "describe", "session_tls", "tls_config"]

logger = logging.getLogger("actorcore")

# Hosts that are loopback without asking `transport.is_loopback_host` (nor importing
# `transport`, and with it Trio, on the driver's way to starting its node: `init()`
# spawns the node before it imports the rest of the runtime).
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", ""})

#: The environment variables read when no explicit value is given.
ENV = {"cert": "ACTORCORE_TLS_CERT", "key": "ACTORCORE_TLS_KEY", "ca": "ACTORCORE_TLS_CA"}
_FLAGS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}


def tls_config(
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    ca: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    names: Mapping[str, str] | None = None,
) -> transport.TlsConfig | None:
    """The TLS config from explicit values, else from the environment; ``None`` when
    neither gives any. Raises `ValueError` naming what is missing when only some are
    given, and (``check``) `transport.TlsError` naming a file that cannot be loaded."""
    given = {"cert": cert, "key": key, "ca": ca}
    source = "arguments"
    if all(v is None for v in given.values()):
        env = os.environ if env is None else env
        given = {k: env.get(name) or None for k, name in ENV.items()}
        source = "environment"
        if all(v is None for v in given.values()):
            return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        names = ENV if source == "environment" else (names or _FLAGS)
        raise ValueError(
            "TLS needs a certificate, its key and the cluster CA together; missing "
            + ", ".join(names[k] for k in missing)
            + " (create all three with `actorcore tls init DIR`)"
        )
    import transport

    config = transport.TlsConfig(cert=given["cert"], key=given["key"], ca=given["ca"])
    if check:
        config.check()
    return config


def session_tls(info: Mapping[str, Any]) -> transport.TlsConfig | None:
    """The TLS config a session of this machine records (``session.json``), if any."""
    recorded = (info.get("security") or {}).get("tls")
    if not recorded:
        return None
    import transport

    return transport.TlsConfig(**recorded)


def check_listen(
    host: str, tls: transport.TlsConfig | None, insecure: bool, *, warn: bool = True
) -> None:
    """Refuse a plaintext TCP listener on a non-loopback ``host`` unless ``insecure``
    (then log a warning, if ``warn``)."""
    if tls is not None or host in _LOOPBACK:
        return
    import transport

    if transport.is_loopback_host(host):
        return
    if insecure and warn:
        logger.warning(
            "listening on %s WITHOUT TLS (--insecure): task arguments and results cross "
            "the network in clear, and anyone on the path can inject frames", host,
        )
    if insecure:
        return
    raise transport.InsecureListener(
        f"refusing to listen on {host!r} without TLS: it is not a loopback address, and "
        f"cluster links carry pickled values (whoever can read or write them on the "
        f"network can read the data or run code in the cluster). Enable TLS: "
        f"`actorcore tls init DIR`, then `actorcore start --tls-cert DIR/node.pem "
        f"--tls-key DIR/node.key --tls-ca DIR/ca.pem` (or the environment variables "
        f"ACTORCORE_TLS_CERT/KEY/CA); or, on a network you trust, pass --insecure"
    )


def apply(tls: transport.TlsConfig | None, insecure: bool = False) -> None:
    """Make ``tls``/``insecure`` this process's default for every TCP link."""
    import transport

    transport.set_default_tls(tls, insecure=insecure)


def argv(tls: transport.TlsConfig | None, insecure: bool = False) -> list[str]:
    """``python -m actorcore.node`` options carrying the settings."""
    out: list[str] = []
    if tls is not None:
        out += ["--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca]
    if insecure:
        out.append("--insecure")
    return out


def describe(host: str | None, tcp: bool, tls: transport.TlsConfig | None, insecure: bool) -> dict[str, Any]:
    """The ``security`` entry of the node's status and session info."""
    import transport

    if tls is not None:
        mode = "tls"
    elif tcp and host is not None and not transport.is_loopback_host(host):
        mode = "insecure"
    else:
        mode = "local"  # Unix sockets and loopback only: the token alone
    return {
        "mode": mode,
        "tls": None if tls is None else tls.as_dict(),
        "insecure": bool(insecure),
        "host": host,
    }
