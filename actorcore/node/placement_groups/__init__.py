"""Placement groups: gang reservation of resource bundles across the cluster."""

from ...protocol._placement import bundle_resources, check_bundles, group_of, rewrite
from ._manager import PlacementGroups, PlacementGroupsService

__all__ = ["PlacementGroups", "PlacementGroupsService", "bundle_resources", "check_bundles",
           "group_of", "rewrite"]
