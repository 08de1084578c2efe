"""Process-level services every stage needs, independent of showers and models.

Owns: rank discovery and the process group (:mod:`.distributed`), the MPI communicator of the data tools
(:mod:`.mpi`), stop signals (:mod:`.signals`), the one stop-and-requeue policy of every job
(:mod:`.requeue_policy`), exit codes (:mod:`.exit_codes`), time limits
(:mod:`.time_limit`), derived seeds (:mod:`.seeds`), atomic files, checksums and timestamps
(:mod:`.files`), lock files on shared filesystems (:mod:`.lock_file`), tensor files that load without
unpickling (:mod:`.tensor_files`), autocast precision (:mod:`.precision`), one rank per GPU
(:mod:`.gpu_claim`) and peak memory (:mod:`.memory`). May import: nothing else of ``pipeline``
(the bottom layer).
"""
