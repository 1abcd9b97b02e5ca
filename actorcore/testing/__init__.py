"""Test helpers that use real processes: fault injection (``faults``) and
multi-node clusters on one machine (``Cluster``)."""

from . import faults
from ._cluster import Cluster, ClusterNode

__all__ = ["Cluster", "ClusterNode", "faults"]
