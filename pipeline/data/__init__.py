"""Showers on disk and on their way to the stages.

Owns: the CaloChallenge HDF5 format (:mod:`.calochallenge_hdf5`), the project's zarr shower store
(:mod:`.shower_store`), the rank-sharded training stream (:mod:`.stream`), block-wise reading of any
sample (:mod:`.samples`), the generated-sample store written block by block (:mod:`.sample_store`),
where every stage of a run writes and how it marks itself finished (:mod:`.run_layout`), and the record a
finished training run or distillation stage hands to the next stage (:mod:`.run_record`, ``DONE.json``).
May import: :mod:`pipeline.runtime`, :mod:`pipeline.config`, :mod:`pipeline.physics`.
"""
