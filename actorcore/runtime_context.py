"""``get_runtime_context()``: where the calling code runs (node, job, task, worker)."""

from __future__ import annotations

from typing import Any

from .api._actor_handle import ActorHandle
from .api._job import default_namespace
from .core_worker import _worker_state

__all__ = ["RuntimeContext", "current_gpu_ids", "get_gpu_ids", "get_runtime_context"]


def current_gpu_ids() -> list[int]:
    """The GPU ids the node assigned to the task or actor this thread runs (``[]``
    in a driver, or for one that asked for no GPU)."""
    ctx = _worker_state.task_context.__dict__
    actor_id = ctx.get("actor_id")
    if actor_id is not None:
        run = _worker_state.actors.get(actor_id)
        return list(run.gpu_ids) if run is not None else []
    return list(ctx.get("gpu_ids") or ())


class RuntimeContext:
    """Ids of the current node, job, task and worker, as hex strings (as Ray's)."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def get_node_id(self) -> str:
        return self._core.node_id.hex()

    def get_job_id(self) -> str:
        return self._core.current_job_id().hex()

    def get_task_id(self) -> str | None:
        """The running task's (or actor method call's) id; None in a driver."""
        spec = _worker_state.current_spec()
        if spec is not None:
            return spec.task_id.hex()
        tid = _worker_state.task_context.__dict__.get("task_id")
        return tid.hex() if tid else None

    def get_task_name(self) -> str | None:
        """The running task's name (``.options(name=)``, else the function's), or
        ``"Class.method"`` in an actor method; None in a driver or a constructor."""
        spec = _worker_state.current_spec()
        return spec.name if spec is not None else None

    def get_worker_id(self) -> str:
        return self._core.worker_id.hex()

    def get_actor_id(self) -> str | None:
        """The id of the actor the caller runs in (hex); None outside an actor."""
        return _worker_state.task_context.__dict__.get("actor_id")

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators assigned to the calling task or actor, by kind, as Ray
        gives them: ``{"GPU": ["0", "1"]}`` (ids as str; empty in a driver)."""
        return {"GPU": [str(i) for i in current_gpu_ids()]}
    def get_actor_name(self) -> str | None:
        """The name the calling actor was created with (``.options(name=)``); None
        outside an actor or for an unnamed one."""
        run = _worker_state.current_actor_run()
        return run.spec.name if run is not None and run.spec is not None else None

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task holds (``{"CPU": 1.0}`` by default), or
        in an actor those its creation reserved (``{}`` by default, as in Ray:
        an actor holds no CPU unless it asks for one). Raises ``RuntimeError`` in a
        driver, which holds none."""
        run = _worker_state.current_actor_run()
        if run is not None and run.spec is not None:
            return dict(run.spec.resources)
        spec = _worker_state.current_spec()
        resources = getattr(spec, "resources", None)
        if resources is None:
            raise RuntimeError(
                "get_assigned_resources() is only defined inside a task or an actor "
                "(a driver holds no resources of the cluster)"
            )
        return dict(resources)

    @property
    def current_actor(self) -> Any:
        """A handle of the actor the caller runs in, as Ray's; ``RuntimeError``
        outside an actor. It counts as a handle like any other: an actor that keeps
        it (in ``self``) keeps itself alive until it is killed or its job ends."""
        run = _worker_state.current_actor_run()
        if run is None or run.spec is None:
            raise RuntimeError("current_actor is only defined inside an actor's methods")
        spec = run.spec
        counted = spec.name is None and not spec.detached and spec.supervisor is None
        return ActorHandle(spec.actor_id, spec.meta, owned=False, counted=counted)

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def worker_id(self) -> str:
        return self.get_worker_id()

    @property
    def gcs_address(self) -> str | None:
        return self._core.gcs_address

    @property
    def namespace(self) -> str:
        """The job's namespace (``init(namespace=)``; "default" without one), in the
        driver and in its tasks and actors alike."""
        return default_namespace()

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether the calling actor runs in a restarted incarnation (its process died
        or it was killed with ``no_restart=False``, and it was created again).

        Raises ``RuntimeError`` outside an actor, where there is nothing to ask about.
        """
        actor_id = _worker_state.task_context.__dict__.get("actor_id")
        run = _worker_state.actors.get(actor_id) if actor_id else None
        if run is None:
            raise RuntimeError(
                "was_current_actor_reconstructed is only defined inside an actor's methods"
            )
        return run.incarnation > 1

    def get(self) -> dict:
        return {
            "node_id": self.node_id,
            "job_id": self.job_id,
            "task_id": self.task_id,
            "worker_id": self.worker_id,
            "gcs_address": self.gcs_address,
            "namespace": self.namespace,
            "actor_id": self.get_actor_id(),
            "task_name": self.get_task_name(),
        }

    def __repr__(self) -> str:
        return f"RuntimeContext({self.get()})"


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_worker_state.auto_core())


def get_gpu_ids() -> list[int]:
    """The ids of the GPUs assigned to the calling task or actor (``0 .. n-1`` of a
    node started with ``num_gpus=n``; one id for a fraction), as Ray's: the ids its
    ``CUDA_VISIBLE_DEVICES`` names. ``[]`` in a driver or without GPUs."""
    return current_gpu_ids()
