"""`transport.message`: a wire message compares, hashes, prints, pickles and evolves as
the attrs class it stands for, without attrs' generated methods."""

from __future__ import annotations

import pickle

import attrs
import pytest

import transport


@transport.compact
@transport.message
class Pair:
    left: int
    right: list = attrs.field(factory=list)


@transport.message
class Empty:
    pass


@transport.message
class Node:
    name: str
    child: object = None


@attrs.frozen(slots=False)
class AttrsPair:
    """The attrs class `Pair` would be: the figures below must match it."""

    left: int
    right: list = attrs.field(factory=list)


def test_equality_and_hash_follow_the_fields_and_the_class() -> None:
    assert Pair(1, [2]) == Pair(1, [2])
    assert Pair(1, [2]) != Pair(1, [3])
    assert not (Pair(1) != Pair(1))
    assert Pair(1) != AttrsPair(1)  # another class: never equal
    assert (Pair(1) == "x") is False
    assert Empty() == Empty() and hash(Empty()) == hash(Empty())
    assert hash(Node("a")) == hash(Node("a"))
    assert len({Node("a"), Node("a"), Node("b")}) == 2
    with pytest.raises(TypeError):
        hash(Pair(1, [2]))  # a list field: unhashable, as attrs' would be


def test_repr_is_the_attrs_repr_and_survives_a_cycle() -> None:
    assert repr(Pair(1, [2])) == repr(AttrsPair(1, [2])).replace("AttrsPair", "Pair")
    assert repr(Empty()) == "Empty()"
    loop = Pair(1, [])
    loop.right.append(loop)
    assert repr(loop) == "Pair(left=1, right=[...])"


def test_frozen_pickled_and_evolved_as_attrs() -> None:
    p = Pair(1, [2])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.left = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(p)) == p
    assert pickle.loads(pickle.dumps(Node("a", Node("b")))) == Node("a", Node("b"))
    assert attrs.evolve(p, left=5) == Pair(5, [2])
    assert attrs.fields(Pair).left.name == "left"
    assert Pair.__match_args__ == ("left", "right")
