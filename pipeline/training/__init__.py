"""Training and progressive distillation on the DeepSpeed engine (commands ``pipeline.train`` and
``pipeline.distill``).

Owns: the train command and ``train()`` (:mod:`.train_command`), distillation stages (:mod:`.distill_command`),
the loop (:mod:`.trainer`) and what it hands back (:mod:`.results`), the loss as one trainable module holding
both networks (:mod:`.losses`), the validation loss (:mod:`.validation`), the engine, optimiser and schedule
(:mod:`.engine`), starting weights (:mod:`.initial_weights`), checkpoints and exact resume
(:mod:`.checkpoint`), the EMA (:mod:`.ema`), metrics logs (:mod:`.metrics_log`) and the fidelity monitor
(:mod:`.monitor`). May import: :mod:`pipeline.runtime`, :mod:`pipeline.config`, :mod:`pipeline.physics`,
:mod:`pipeline.data`, :mod:`pipeline.models`, :mod:`pipeline.diffusion`, :mod:`pipeline.evaluation` (never
generation, launch or tools).
"""
