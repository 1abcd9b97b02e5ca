"""``get_runtime_context()``: where the calling code runs (node, job, task, worker)."""

from __future__ import annotations

from typing import Any

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
        tid = _worker_state.task_context.__dict__.get("task_id")
        return tid.hex() if tid else None

    def get_worker_id(self) -> str:
        return self._core.worker_id.hex()

    def get_actor_id(self) -> str | None:
        return _worker_state.task_context.__dict__.get("actor_id")

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators assigned to the calling task or actor, by kind, as Ray
        gives them: ``{"GPU": ["0", "1"]}`` (ids as str; empty in a driver)."""
        return {"GPU": [str(i) for i in current_gpu_ids()]}

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
        from .api._actor_class import default_namespace

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
