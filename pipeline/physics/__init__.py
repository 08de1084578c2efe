"""The physics of a calorimeter shower as the models see it: the CaloChallenge geometry from the binning
XML (:mod:`.geometry`), the statistics a store keeps of its showers (:mod:`.shower_stats`), and the
invertible CaloScore-v2-style preprocessing between showers in MeV and the diffusion space
(:mod:`.preprocessing`).

Owns: voxel layout, thresholds, energy bookkeeping. May import: :mod:`pipeline.runtime`,
:mod:`pipeline.config`.
"""
