"""Mass generation (command ``pipeline.generate``): a finished run's sampler -> a sample of N showers on any
number of ranks, resumable block by block.

Owns: the command and the sample's plan (:mod:`.command`), loading a run's sampler (:mod:`.sampler`), the
incident energy of every index (:mod:`.energies`), and generating a rank's blocks with the device and
batch size (:mod:`.blocks`). May import: :mod:`pipeline.runtime`, :mod:`pipeline.config`,
:mod:`pipeline.physics`, :mod:`pipeline.data`, :mod:`pipeline.models`, :mod:`pipeline.diffusion`
(never training, evaluation, launch or tools).
"""
