"""CaloChallenge-style evaluation of a generated shower sample against a reference sample.

- :mod:`.samples`: one reader for CaloChallenge HDF5 files, zarr stores and in-memory arrays
  (validated, blockwise, thresholded).
- :mod:`.observables`: high-level features (E_tot/E_inc, layer energies, centres of energy and
  widths in x and y, sparsity), voxel spectrum and average showers, in one streaming pass.
- :mod:`.separation`: histogram separation power with reference-fixed binning and its noise floor.
- :mod:`.classifier`: DNN classifier tests (low-level voxels, high-level features), calibrated AUC/JSD.
- :mod:`.physics_distance`: Frechet and kernel physics distances (FPD, KPD).
- :mod:`.plots`, :mod:`.report`, :mod:`.runner`: plots, report.json/report.md, the whole evaluation.

The command line is ``python -m pipeline.evaluate``.
"""
