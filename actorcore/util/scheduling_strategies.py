"""Scheduling strategies of tasks and actors (Ray's ``ray.util.scheduling_strategies``).

``NodeAffinitySchedulingStrategy``: run on one node (or, ``soft=True``, there if it
can). ``PlacementGroupSchedulingStrategy``: run in a bundle of a placement group.
The classes are defined in ``api._strategies``, below the option checks that
recognise them.
"""

from ..api._strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
