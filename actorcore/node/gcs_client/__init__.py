"""The node's link to the control state: the GCS, or memory without one.

``_control``: ``GcsControlState`` (through ``gcs.GcsClient``) and
``MemoryControlState``.
"""
