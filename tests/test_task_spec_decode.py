"""A decoded `TaskSpec` shares with the spec decoded before it every field equal to
that spec's (``actorcore.protocol._messages``, "Sharing what specs have in common"):
a node holding a million queued specs that came one per frame keeps one job id,
function id, name, argument blob, resources dict, dependency list and owner for all
of them, not one each."""

from __future__ import annotations

import os
import pickle
import sys

from actorcore.protocol._ids import new_task_id
from actorcore.protocol._messages import TaskSpec

_SHARED = ("job_id", "function_id", "name", "args", "deps", "resources", "retry_exceptions",
           "parent_task_id", "owner", "runtime_env")


def _spec(**changes: object) -> TaskSpec:
    # Every field a fresh object, as from a spec of its own frame.
    fields: dict = dict(
        task_id=new_task_id(), job_id=bytes([1, 0, 0, 0]), function_id=b"f" * 20,
        name="__main__.noop", args=b"blob" * 10, deps=[b"d" * 20], num_returns=1,
        resources={"CPU": 1.0}, max_retries=3, retry_exceptions=b"types",
        parent_task_id=b"p" * 16, owner=b"o" * 16, runtime_env={"key": "env"},
    )
    fields.update(changes)
    return TaskSpec(**fields)


def _each_in_its_own_frame(specs: list[TaskSpec]) -> list[TaskSpec]:
    return [pickle.loads(pickle.dumps(s, protocol=5)) for s in specs]


def test_specs_decoded_one_per_frame_share_their_equal_fields() -> None:
    first, second = _each_in_its_own_frame([_spec(), _spec()])
    assert type(first) is TaskSpec and type(second) is TaskSpec
    for name in _SHARED:
        assert getattr(first, name) is getattr(second, name), name
    assert first.task_id != second.task_id


def test_a_field_that_differs_is_the_spec_own_and_every_value_survives() -> None:
    original = [_spec(), _spec(args=b"other", deps=[b"e" * 20, b"d" * 20],
                               resources={"CPU": 2.0}, name="__main__.other",
                               strategy="SPREAD", attempt=2, max_calls=5)]
    first, second = _each_in_its_own_frame(original)
    for decoded, sent in zip((first, second), original, strict=True):
        for name in TaskSpec.__slots__:
            if name != "__weakref__":
                assert getattr(decoded, name) == getattr(sent, name), name
    assert second.args is not first.args and second.deps is not first.deps
    assert second.resources is not first.resources and second.name is not first.name
    assert first.owner is second.owner  # equal: still shared


def test_sharing_saves_the_bytes_of_the_equal_fields() -> None:
    # What a queued spec costs beside the one decoded before it.
    def own_bytes(spec: TaskSpec, other: TaskSpec) -> int:
        total = sys.getsizeof(spec)
        for name in _SHARED + ("task_id",):
            value = getattr(spec, name)
            if value is not getattr(other, name):
                total += sys.getsizeof(value)
        return total

    blob = os.urandom(60)
    first, second = _each_in_its_own_frame([_spec(args=blob), _spec(args=blob)])
    assert own_bytes(second, first) < 300, own_bytes(second, first)
