"""The actor kernel: actors, refs, replies, the hub data plane and the wire protocol.

Public to the layers above (``_routing``, ``_graph``, ...): ``actor``, ``ref``, ``reply``
and ``events``. ``hub`` and ``protocol`` are the kernel's internals (docs/internals.md).
"""
