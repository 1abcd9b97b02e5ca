"""Actor names: unique in their namespace across the cluster, claimed in the GCS.

The node keeps the names of the actors it created (``by_key``) and answers from
them first; the GCS name registry (``gcs.actors``) is the cluster-wide authority.
A named creation is acknowledged only once its name is claimed there, so a taken
name fails in the caller's ``.remote()``. A dead actor's name is released, and a
claim left in the GCS by an actor that died here (its release still on its way)
is taken back. Lookups and listings of names that live on other nodes go to the
GCS (``get_actor``, ``list_named_actors``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from ...protocol import _wire as w
from ...protocol._actors import ActorSpec
from ._record import ActorRecord

__all__ = ["ActorNames", "NamesHost"]

logger = logging.getLogger("actorcore.actors")


class _Finder(Protocol):
    async def find_host(self, rec: ActorRecord) -> None: ...


class NamesHost(Protocol):
    """What the names use of the actor manager (``_manager.ActorManager``)."""

    @property
    def node(self) -> Any: ...  # the ``NodeRuntime``: ``control``, ``view``, ``spawn``
    @property
    def actors(self) -> Mapping[bytes, ActorRecord]: ...
    @property
    def remote(self) -> _Finder: ...
    def proxy_record(self, actor_id: bytes) -> ActorRecord: ...
    def end(self, rec: ActorRecord, cause: str, *, notify: bool = True) -> None: ...


class ActorNames:
    """The names of this node's actors (see the module docstring)."""

    def __init__(self, manager: NamesHost) -> None:
        self.manager = manager
        #: (namespace, name) -> the actor's id, for the live named actors created here.
        self.by_key: dict[tuple[str, str], bytes] = {}

    @property
    def _gcs(self) -> bool:
        return bool(self.manager.node.control.backend == "gcs")

    def free(self, spec: ActorSpec, reply: Any, get_if_exists: bool) -> bool:
        """Whether ``spec``'s name is free here; if not, ``reply`` is answered: with
        the actor that has it (``get_if_exists``), else with an error naming it."""
        other = self.by_key.get((spec.namespace, spec.name or ""))
        if other is None:
            return True
        holder = self.manager.actors[other].spec
        if get_if_exists:
            reply.send(w.ActorFound(other, holder.meta))
        else:
            reply.fail(ValueError(
                f"actor name {spec.name!r} is already taken in namespace "
                f"{spec.namespace!r} (by {holder.describe()})"))
        return False

    def take(self, rec: ActorRecord, reply: Any) -> None:
        """``rec``'s name is its own here; claimed in the GCS behind (``reply``, if
        any, answered once it is)."""
        spec = rec.spec
        assert spec.name is not None
        self.by_key[(spec.namespace, spec.name)] = spec.actor_id
        if self._gcs:
            self.manager.node.spawn(self._claim, rec, reply)
        elif reply is not None:
            reply.send(None)

    def release(self, spec: ActorSpec) -> None:
        """The actor ``spec`` is dead: its name is free again, here and in the GCS."""
        key = (spec.namespace, spec.name or "")
        if self.by_key.get(key) != spec.actor_id:
            return
        del self.by_key[key]
        if self._gcs:
            self.manager.node.spawn(_quietly, self._unregister_name, spec)

    async def republish(self) -> int:
        """The GCS restarted empty: claim the names of the live named actors here
        again. Returns how many."""
        named = [rec for rec in self.manager.actors.values()
                 if rec.state != "dead" and rec.spec.name is not None
                 and self.by_key.get((rec.spec.namespace, rec.spec.name)) == rec.spec.actor_id]
        call = self.manager.node.control.call
        for rec in named:
            spec = rec.spec
            try:
                await call(lambda gcs, s=spec: gcs.actors.register_name(
                    s.name, s.actor_id.hex(), namespace=s.namespace))
            except Exception as exc:
                if getattr(exc, "owner", None) != spec.actor_id.hex():
                    logger.error("claiming the name of live actor %s again in the restarted "
                                 "GCS failed: %s", spec.describe(), exc)
        return len(named)

    def lookup(self, conn: Any, m: w.LookupActor, reply: Any) -> None:
        """`LookupActor`: the live actor of that name, here or (via the GCS) elsewhere."""
        name, ns = m.name, m.namespace
        aid = self.by_key.get((ns, name))
        if aid is None or self.manager.actors[aid].state == "dead":
            if self.manager.node.view.multi and self.manager.node.control.backend == "gcs":
                self.manager.node.spawn(self._lookup_cluster, name, ns, reply)
                return
            raise ValueError(f"there is no live actor named {name!r} in namespace {ns!r}")
        reply.send(w.ActorFound(aid, self.manager.actors[aid].spec.meta))

    def list_names(self, conn: Any, m: w.ActorNames, reply: Any) -> None:
        """`ActorNames`: the (namespace, name) of every live named actor."""
        if self.manager.node.view.multi and self.manager.node.control.backend == "gcs":
            self.manager.node.spawn(self._cluster_names, reply)
            return
        reply.send(sorted({(r.spec.namespace, r.spec.name) for r in self.manager.actors.values()
                           if r.spec.name is not None and r.state != "dead"
                           and r.node is None}))

    async def _claim(self, rec: ActorRecord, reply: Any) -> None:
        """Claim the name of ``rec`` in the GCS registry; ``reply`` (if any) is answered
        once it is claimed, or the actor ends saying why it could not be."""
        spec = rec.spec
        assert spec.name is not None
        name, namespace, aid = spec.name, spec.namespace, spec.actor_id.hex()
        # Through ``control.call``: a claim cut off by a restart of ``gcs_client`` is
        # made again on the next link, and finding it already ours is success.
        call = self.manager.node.control.call
        try:
            for attempt in range(20):
                try:
                    await call(lambda gcs: gcs.actors.register_name(name, aid,
                                                                    namespace=namespace))
                    break
                except Exception as exc:
                    if type(exc).__name__ != "NameTaken" or attempt == 19:
                        raise
                    owner = getattr(exc, "owner", None)
                    if owner == aid:
                        break  # our own claim, made by an attempt cut off before its reply
                    # This node's names are the authority (we checked them): a claim in
                    # the GCS is stale — its actor died here and the release is still on
                    # its way (or was lost). Release it and claim again.
                    known = (self.manager.actors.get(bytes.fromhex(owner))
                             if isinstance(owner, str) else None)
                    if known is not None and known.state != "dead":
                        raise
                    if owner is not None:
                        await call(lambda gcs, o=owner: gcs.actors.unregister_name(
                            name, namespace=namespace, actor_id=o))
                    await trio.sleep(0.01)
        except Exception as exc:
            logger.warning("claiming actor name %r in the GCS failed: %s", spec.name, exc)
            if reply is not None and not reply.done:
                reply.fail(ValueError(f"could not claim actor name {spec.name!r}: {exc}"))
            self.manager.end(rec, f"its name {spec.name!r} could not be claimed: {exc}")
            return
        if reply is not None and not reply.done:
            reply.send(None)

    async def _unregister_name(self, spec: ActorSpec) -> None:
        await self.manager.node.control.call(lambda gcs: gcs.actors.unregister_name(
            spec.name, namespace=spec.namespace, actor_id=spec.actor_id.hex()))

    async def _cluster_names(self, reply: Any) -> None:
        """``list_named_actors`` on a cluster of several nodes: the GCS name
        registry has every node's names; an actor whose record says it is dead
        (its name not yet released) is left out."""
        try:
            rows = await self.manager.node.control.call(lambda gcs: gcs.scan("actor_names", ""))
            ids = sorted({str(v) for _k, v in rows})

            async def read(gcs: Any) -> list:
                return [await gcs.get("actors", aid) for aid in ids]

            records = await self.manager.node.control.call(read) if ids else []
        except Exception as exc:
            logger.warning("reading the actor names from the GCS failed: %s", exc)
            reply.fail(exc)
            return
        states = {aid: (r.get("state") if isinstance(r, dict) else None)
                  for aid, r in zip(ids, records, strict=True)}
        out = set()
        for key, aid in rows:
            namespace, _, name = str(key).partition("\x00")
            if states.get(str(aid)) != "dead":
                out.add((namespace, name))
        reply.send(sorted(out))

    async def _lookup_cluster(self, name: str, ns: str, reply: Any) -> None:
        """``get_actor(name)`` of an actor another node hosts: the GCS names it, its
        host gives its spec, and this node keeps a proxy for the calls."""
        try:
            hexid = await self.manager.node.control.call(
                lambda gcs: gcs.actors.lookup_name(name, namespace=ns))
            if not isinstance(hexid, str):
                raise ValueError(f"there is no live actor named {name!r} in namespace {ns!r}")
            aid = bytes.fromhex(hexid)
            rec = self.manager.actors.get(aid)
            if rec is None or rec.state == "dead" or rec.stub:
                if rec is None or rec.state == "dead":
                    rec = self.manager.proxy_record(aid)
                    self.manager.node.spawn(self.manager.remote.find_host, rec)
                with trio.fail_after(30):
                    while rec.stub and rec.state != "dead":
                        await rec.ready.wait()
                        if rec.stub:
                            await trio.sleep(0.01)
            if rec.state == "dead":
                raise ValueError(f"there is no live actor named {name!r} in namespace "
                                 f"{ns!r} (it died: {rec.cause})")
            reply.send(w.ActorFound(aid, rec.spec.meta))
        except trio.TooSlowError:
            reply.fail(TimeoutError(f"the actor named {name!r} in namespace {ns!r} was "
                                    f"not reachable within 30 s"))
        except Exception as exc:
            reply.fail(exc)


async def _quietly(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        logger.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
