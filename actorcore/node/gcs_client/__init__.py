"""The node's link to the control state: the GCS, or memory without one.

``_control``: ``GcsControlState`` (through ``gcs.GcsClient``) and
``MemoryControlState``, owned by the node; ``_link``: ``GcsClientLink``, the
``gcs_client`` component of the node's tree (the link and the lineage flusher).
"""
