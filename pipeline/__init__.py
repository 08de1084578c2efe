"""Diffusion surrogates of calorimeter showers: from a converted store to a million-shower sample.

Dependencies run one way, bottom to top (checked by import-linter, ``setup.cfg``):

    runtime     ranks and process groups, MPI, stop signals, exit codes, atomic files, tensor files, precision
    config      the typed config schema, its YAML loader and the launch resources
    physics     geometry from the binning XML, shower statistics, invertible preprocessing
    data        CaloChallenge HDF5, the zarr shower store, the training stream, sample readers,
                the generated-sample store, where each stage writes (run layout)
    models | diffusion      networks and their weights file | schedule, sampler, noise, distillation, synthesis
    evaluation  the CaloChallenge metrics (command pipeline.evaluate; training's fidelity monitor uses them)
    training | generation   the stages (commands pipeline.train / distill, generate)
    launch      the stage graph submitted with submitit
    tools       demo, info, the ``calo`` console script (the only part that uses ``data_tools``)

The modules ``pipeline.train``, ``pipeline.distill``, ``pipeline.generate``, ``pipeline.evaluate``,
``pipeline.info`` and ``pipeline.demo`` are the ``python -m`` commands; each only calls its package's
``main``. ``python -m pipeline.launch`` is the launch package itself.
"""
