"""Placement groups: gang reservation of resource bundles across the cluster."""

from ._manager import PlacementGroups, PlacementGroupsService
from ._resources import bundle_resources, check_bundles, group_of, rewrite

__all__ = ["PlacementGroups", "PlacementGroupsService", "bundle_resources", "check_bundles",
           "group_of", "rewrite"]
