"""Extension codes: a message class travels as a number, not as its module and name.

Every message between our processes is an instance of a frozen attrs class, and a
pickle names an instance's class by its module and qualified name. Unpickling such
a name costs an import: CPython's unpickler (``find_class``) calls
``__import__`` on the module and then looks the name up, for every class of every
message, since the memo that would serve a repeat lives only as long as one pickle
stream. That made a lone typed message cost about 2 µs more to decode than the
tuple it replaced (``benchmarks/messages_bench.py``).

The standard library has the cure, from the days of protocol 2 (PEP 307): the
extension registry. `register_codes` calls ``copyreg.add_extension(module, name,
code)`` for each class; from then on the pickler writes ``EXT4 <code>`` (5 bytes)
where it wrote the two names, and the unpickler finds the class in
``copyreg._extension_cache`` by that number, with no import (it imports once, the
first time it meets the code, to fill the cache). Nothing else changes: the same
``pickle.dumps`` and ``pickle.loads``, no codec of ours, and a pickle of an
unregistered class still names it as before.

Which number (the design decision)
----------------------------------
A class's code is a hash of its qualified name (`wire_code`: CRC-32 of
``"module:qualname"`` folded into a private range), not its index in a sorted list
of the classes, and no handshake carries a table:

* Every process of every version computes the same code for the same class on its
  own, at import. Nothing is exchanged, so nothing can be lost or raced: a link
  decodes its first frame as it decodes its millionth.
* Adding, removing or renaming a class never moves another class's code. With
  numbers taken from a sorted list, a peer one class behind (a rolling upgrade, a
  stale worker) would decode each code past the change as its *neighbour* --
  silently the wrong message. With codes from names, a class the receiver lacks is
  an unknown code: ``pickle`` raises ``ValueError: unregistered extension code``,
  which the transport reports as a message it could not decode (a request gets a
  `ProtocolError` reply, a one-way message is logged and dropped, the connection
  serves on) -- exactly what an unknown module or class name gets.
* A handshake could not do better: copyreg's registry is one per process, not one
  per connection, so a table carried by a hello could only be *checked*, and codes
  from names need no check.
* Two names that hash alike are refused here, at import, in every process
  (`register_codes` raises naming both), so a clash cannot ship: the test suite
  imports every vocabulary.
* The rule this adds: a process decodes the codes of the vocabularies it imported
  (each registers its classes at its end), where a class name would have imported
  its module on demand. Every process that speaks a vocabulary imports it to speak
  it; a pickle of a registered class read by a process that never imported its
  module (none today: stored GCS values are decoded by the nodes and drivers that
  wrote them) would fail as an unregistered code, loudly.

The range: copyreg's own table (``copyreg.py``) reserves codes 1-255 (the standard
library, Zope, third parties, and 240-255 for private use) and calls everything from
256 up "reserved for future assignment"; in twenty years none has been assigned.
We take ``0x7AC00000``-``0x7AFFFFFF`` (4M codes; about 150 classes use it, so a
clash is a ~0.3 % event, caught as above). A code some other library registered in
this process is refused by ``copyreg.add_extension`` (a ``ValueError`` naming it).

What codes do not save
----------------------
Pickling. CPython's pickler (``save_global`` in ``_pickle.c``, 3.11) imports the
class's module, checks that the name leads back to the class, and only then looks
in the registry, so a sender still pays about 1.5-2 µs per class per frame (the
frame's memo serves repeats: a batch of a thousand messages pays it once per
class). The only ways around it are a memo shared by both ends across frames or a
``persistent_id`` hook called for every object pickled; the first needs a stateful
unpickler per connection (``pickle.loads`` cannot take a memo), the second costs
more on a batch than it saves on a lone message. Measured and left out; see
benchmarks/README.md.
"""

from __future__ import annotations

import copyreg
import sys
import zlib

import attrs

__all__ = ["CODE_BASE", "CODE_SPAN", "classes_of", "register_codes", "registered_code",
           "wire_code"]

#: The first code of our private range.
CODE_BASE = 0x7AC0_0000
#: How many codes the range holds (a power of two: the hash is masked into it).
CODE_SPAN = 0x40_0000

# code -> "module.qualname" of the classes registered here (to name both sides of a clash)
_by_code: dict[int, str] = {}
# class -> its code, once registered
_codes: dict[type, int] = {}


def wire_code(cls: type) -> int:
    """The extension code of ``cls``: derived from its module and qualified name
    only, so every process computes the same one (see the module docstring)."""
    key = f"{cls.__module__}:{cls.__qualname__}".encode()
    return CODE_BASE + (zlib.crc32(key) & (CODE_SPAN - 1))


def registered_code(cls: type) -> int | None:
    """The code ``cls`` travels as, or None if it was never registered."""
    return _codes.get(cls)


def register_codes(*classes: type) -> None:
    """Register each class with copyreg under its `wire_code`, so that pickles name
    it by that number (idempotent).

    Raises ``TypeError`` for something that is not a class reachable by its module
    and qualified name (a pickle could not name it), and ``ValueError`` when a code
    is taken by another class (naming both).
    """
    for cls in classes:
        if not isinstance(cls, type):
            raise TypeError(f"register_codes() takes classes, got {cls!r}")
        module, name = cls.__module__, cls.__qualname__
        target = sys.modules.get(module)
        for part in name.split("."):
            target = getattr(target, part, None)
        if target is not cls:
            raise TypeError(f"register_codes(): {module}.{name} is not reachable by its "
                            "module and qualified name, so no pickle can name it")
        code = wire_code(cls)
        full = f"{module}.{name}"
        other = _by_code.get(code)
        if other is not None and other != full:
            raise ValueError(f"register_codes(): {full} and {other} have the same wire "
                             f"code {code:#x}: rename one of them")
        try:
            copyreg.add_extension(module, name, code)
        except ValueError as exc:  # the code or the name is registered by someone else
            raise ValueError(f"register_codes(): cannot register {full} as {code:#x}: "
                             f"{exc}") from None
        _by_code[code] = full
        _codes[cls] = code


def classes_of(module: str) -> list[type]:
    """The attrs classes defined in ``module`` (by their ``__module__``): what a
    vocabulary module registers (``register_codes(*classes_of(__name__))`` at its
    end)."""
    namespace = vars(sys.modules[module])
    return [value for value in list(namespace.values())
            if isinstance(value, type) and value.__module__ == module and attrs.has(value)]
