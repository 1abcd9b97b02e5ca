"""Test helpers that use real processes: fault injection (``faults``)."""

from . import faults

__all__ = ["faults"]
