"""CaloChallenge-style evaluation of a generated shower sample against a reference (command
``pipeline.evaluate``, :mod:`.command`).

- :mod:`.observables`: high-level features (E_tot/E_inc, layer energies, centres of energy and
  widths in x and y, sparsity), voxel spectrum and average showers, in one streaming pass over the
  samples (read block-wise by :mod:`pipeline.data.samples`).
- :mod:`.separation`: histogram separation power with reference-fixed binning and its noise floor.
- :mod:`.classifier` (+ :mod:`.calibration`, :mod:`.sparse_rows`): DNN classifier tests (low-level voxels,
  high-level features), calibrated AUC/JSD.
- :mod:`.physics_distance`: Frechet and kernel physics distances (FPD, KPD).
- :mod:`.plots`, :mod:`.report`, :mod:`.published`, :mod:`.runner`: plots, report.json/report.md beside the
  published results, the whole evaluation; :mod:`.distortions`: known distortions the trust tests use.

May import: :mod:`pipeline.runtime`, :mod:`pipeline.config`, :mod:`pipeline.physics`, :mod:`pipeline.data`
(never training, generation, launch or tools, which sit above it: training's fidelity monitor uses it).
"""
