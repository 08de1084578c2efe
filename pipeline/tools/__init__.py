"""Tools around the stages: the demo that runs the whole chain on stand-in data (:mod:`.demo`), model sizes
and FLOPs (:mod:`.info`) and the ``calo`` console script (:mod:`.cli`).

May import everything in ``pipeline``, and ``data_tools`` (the demo simulates its stand-in data and
converts it); nothing in ``pipeline`` imports this package.
"""
