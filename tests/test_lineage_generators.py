"""Lost items of generator tasks rebuilt by re-running the generator (issue 12).

One node whose store holds 10 MB and spills to a directory the tests empty: an item
of a ``num_returns="dynamic"`` or ``"streaming"`` task whose spill file is deleted
is rebuilt by running the generator again, as Ray does (item ``i`` has the same id
in every run, so the re-run's item ``i`` is the lost one); a generator that yields
fewer items when re-run, and one with no retries left, fail with the typed error
that says why. After each, a new task still runs.

Each generator appends a line per run to a file of the test, so the tests count
exactly how often it ran. The module shares one cluster: every test drops its refs,
so the store is empty again after each.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import actorcore as ray
from actorcore.exceptions import (
    GetTimeoutError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
)
from actorcore.protocol._ids import task_id_of

MB = 1024 * 1024
ITEM = 3 * MB


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("gen")
    spill = root / "spill"
    ray.init(num_cpus=1, object_store_memory=10 * MB, log_to_driver=False,
             object_spilling_directory=str(spill))
    try:
        yield spill
    finally:
        ray.shutdown()


def _runs(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _spill_out(refs: list, spill: Path) -> None:
    """Push the objects of ``refs`` out of the store until each has its spill file."""
    fillers = []
    for _ in range(10):
        if all(glob.glob(str(spill / f"*{r.hex()}*.spill")) for r in refs):
            break
        fillers.append(ray.put(np.zeros(4 * MB, dtype=np.uint8)))
    else:
        raise AssertionError("the items were not all spilled")
    del fillers


def _delete_spill_files(spill: Path) -> int:
    deleted = 0
    for f in glob.glob(str(spill / "*.spill")):
        with contextlib.suppress(FileNotFoundError):  # a filler the store let go
            os.unlink(f)
            deleted += 1
    return deleted


@ray.remote
def noop() -> int:
    return 1


# Retries for a run per lost item: an item the re-run makes again while the store
# still lists its lost copy is found lost only when read, and runs it once more.
@ray.remote(num_returns="dynamic", max_retries=5)
def dynamic_items(log: str, n: int) -> Iterator[np.ndarray]:
    with open(log, "a") as f:
        f.write("run\n")
    for i in range(n):
        yield np.full(ITEM, i + 1, dtype=np.uint8)


@ray.remote(num_returns="streaming", max_retries=5)
def streamed_items(log: str, n: int) -> Iterator[np.ndarray]:
    with open(log, "a") as f:
        f.write("run\n")
    for i in range(n):
        yield np.full(ITEM, 10 + i, dtype=np.uint8)


@ray.remote(num_returns="dynamic", max_retries=2)
def fewer_when_rerun(log: str) -> Iterator[np.ndarray]:
    first = not os.path.exists(log)
    with open(log, "a") as f:
        f.write("run\n")
    for i in range(3 if first else 1):
        yield np.full(ITEM, i + 1, dtype=np.uint8)


@ray.remote(num_returns="dynamic", max_retries=5)
def gated_items(log: str, gate: str, n: int) -> Iterator[np.ndarray]:
    # A re-run stops before its item 2 until the test opens the gate: the test finds
    # another item lost while this run is under way.
    rerun = os.path.exists(log)
    with open(log, "a") as f:
        f.write("run\n")
    for i in range(n):
        if rerun and i == 2:
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        yield np.full(ITEM, i + 1, dtype=np.uint8)


def _node_sees(ref: Any) -> dict:
    """What the node knows of the task of ``ref`` (its returns in the directory,
    where it is) and its lineage's figures: said when a rebuild is not done in time."""
    return {"task": ray._api._call("task", task_id_of(ref.binary()).hex()),
            "lineage": ray._api._call("status")["lineage"]}


def _get(ref: Any, timeout: float = 60) -> Any:
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError as exc:
        raise AssertionError(f"{exc}; the node sees {_node_sees(ref)}") from None


def _until(predicate: Any, what: str, explain: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s: {explain()}")
        time.sleep(0.02)


def _check(value: Any, fill: int) -> None:
    assert value.shape == (ITEM,) and value[0] == fill and value[-1] == fill


def test_a_lost_item_of_a_dynamic_generator_is_rebuilt(one_node, tmp_path):
    log = tmp_path / "runs.log"
    refs = list(ray.get(dynamic_items.remote(str(log), 3), timeout=60))
    assert len(refs) == 3
    _spill_out(refs, one_node)
    assert _delete_spill_files(one_node)
    _check(_get(refs[1]), 2)
    assert _runs(log) == 2  # one re-run of the whole generator
    for i, ref in enumerate(refs):  # the others' values, each rebuilt when read
        _check(_get(ref), i + 1)
    assert _runs(log) <= 4
    assert ray.get(noop.remote(), timeout=30) == 1


def test_an_item_lost_while_its_rebuild_runs_gets_a_run_of_its_own(one_node, tmp_path):
    # Item 0 is found lost while the run rebuilding item 1 goes on: it joins that
    # run, which does not yield it again (its lost copy was still listed), so when
    # that run's end arrives a run of its own starts from inside the end's `put`.
    # That rebuild makes the end pending again and waits for it; the `put` that
    # called it must not then drop the entry as freed (the end's owner freed it
    # long ago), or the second run's end is never seen, its task stays "being
    # rebuilt", and a later lost item joins a run that has ended: its read hangs.
    log, gate = tmp_path / "runs.log", tmp_path / "gate"
    refs = list(ray.get(gated_items.remote(str(log), str(gate), 3), timeout=60))
    _spill_out(refs, one_node)
    assert _delete_spill_files(one_node)
    _check(_get(refs[1]), 2)  # its re-run now waits at the gate

    def node_sees() -> dict:
        return _node_sees(refs[0])

    got: list[Any] = []

    def read_item_0() -> None:
        try:
            got.append(ray.get(refs[0], timeout=60))
        except Exception as exc:
            got.append(exc)

    reader = threading.Thread(target=read_item_0)
    reader.start()
    try:
        _until(lambda: not node_sees()["task"].get("returns", {}).get(
            refs[0].hex(), {}).get("ready", True), "item 0 found lost", node_sees)
    finally:
        gate.touch()
        reader.join(timeout=90)
    assert got and not isinstance(got[0], Exception), f"reading item 0 gave {got}"
    _check(got[0], 1)
    assert _runs(log) == 3
    _until(lambda: node_sees()["lineage"].rebuilding == 0,
           "the run that rebuilt item 0 ended", node_sees)
    _check(_get(refs[2]), 3)
    # Item 2 (lost with the others) is rebuilt by a fourth run, or already by the
    # third if that run yielded it after the node found it lost: which, is timing
    # (a fresh clone saw 3 once). Either way it is read whole, and no more runs.
    assert _runs(log) in (3, 4)
    assert ray.get(noop.remote(), timeout=30) == 1


def test_a_lost_item_of_a_streaming_generator_is_rebuilt(one_node, tmp_path):
    log = tmp_path / "runs.log"
    gen = streamed_items.remote(str(log), 3)
    refs = list(gen)
    assert len(refs) == 3
    del gen
    _spill_out(refs, one_node)
    assert _delete_spill_files(one_node)
    _check(ray.get(refs[2], timeout=60), 12)
    assert _runs(log) == 2
    for i, ref in enumerate(refs):
        _check(ray.get(ref, timeout=60), 10 + i)
    assert _runs(log) <= 4
    assert ray.get(noop.remote(), timeout=30) == 1


def test_an_item_the_rerun_does_not_yield_fails_saying_so(one_node, tmp_path):
    log = tmp_path / "runs.log"
    refs = list(ray.get(fewer_when_rerun.remote(str(log)), timeout=60))
    assert len(refs) == 3
    _spill_out(refs, one_node)
    assert _delete_spill_files(one_node)
    with pytest.raises(ObjectReconstructionFailedError) as info:
        ray.get(refs[2], timeout=60)
    text = str(info.value)
    assert refs[2].hex() in text and "without yielding item 2 again" in text
    assert "fewer_when_rerun" in text
    assert _runs(log) == 2
    assert ray.get(noop.remote(), timeout=30) == 1


def test_a_generator_with_no_retries_left_fails_with_max_attempts(one_node, tmp_path):
    log = tmp_path / "runs.log"
    refs = list(ray.get(dynamic_items.options(max_retries=0).remote(str(log), 2),
                        timeout=60))
    _spill_out(refs, one_node)
    assert _delete_spill_files(one_node)
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        ray.get(refs[0], timeout=60)
    assert refs[0].hex() in str(info.value) and "no retries left" in str(info.value)
    assert _runs(log) == 1
    assert ray.get(noop.remote(), timeout=30) == 1
