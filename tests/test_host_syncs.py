"""A training step waits for the device once: the all-reduce of losses and stop flags (issue 25).

On a GPU every read of a device tensor on the host (``.item()``, ``.tolist()``, ``bool(t)``,
``float(t)``, ``.numpy()``, ``.cpu()``) makes the host wait for the device. This test counts them on
the CPU: a training run executes in a subprocess with those methods patched to record who called
them, and the step's one intended read (:meth:`Trainer._all_reduce`, whose result is a host tensor)
hands back a marked tensor subclass whose reads, and those of everything computed from it, are not
counted. Every other read from the project's code inside ``train_step`` or ``_after_step`` of a
step that writes no log row, checkpoint or validation is a sync the GPU would pay every step.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_runs import clean_env, write_config

from conftest import REPO

COUNT_READS = r"""
import collections, json, os, sys
import torch
from pipeline.config import load_config
from pipeline.training import trainer as trainer_module
from pipeline.training.train_command import train

class OnHost(torch.Tensor):
    "Marks the all-reduced result and whatever is computed from it (host tensors on a GPU)."

reads, all_reduces, active = collections.Counter(), collections.Counter(), [None]
ROOT = os.getcwd() + "/"  # the repository: the project's files are named from it

def counting(name):
    original = getattr(torch.Tensor, name)
    def read(self, *args, **kwargs):
        if active[0] is not None and not isinstance(self, OnHost):
            caller = sys._getframe(1).f_code
            where = caller.co_filename.split("/site-packages/")[-1]  # a library: its path there
            where = where[len(ROOT):] if where.startswith(ROOT) else where  # ours: from the repo
            reads[(active[0], name, f"{where}:{caller.co_name}")] += 1
        return original(self, *args, **kwargs)
    setattr(torch.Tensor, name, read)

for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
    counting(name)

def step_part(name):
    original = getattr(trainer_module.Trainer, name)
    def run(self, *args, **kwargs):
        n = self.step + 1 if name == "train_step" else self.step  # the step being made
        plain = n % self.t.log_every_steps and n < self.t.max_steps  # no log row, not the last
        active[0] = f"{name}, step {n}" if plain else None
        try:
            return original(self, *args, **kwargs)
        finally:
            active[0] = None
    setattr(trainer_module.Trainer, name, run)

for name in ("train_step", "_after_step"):
    step_part(name)

original_all_reduce = trainer_module.Trainer._all_reduce
def all_reduce(self, x, *args, **kwargs):
    part, active[0] = active[0], None  # its one read is the step's intended wait
    try:
        if part is not None:
            all_reduces[part] += 1
        return original_all_reduce(self, x, *args, **kwargs).as_subclass(OnHost)
    finally:
        active[0] = part
trainer_module.Trainer._all_reduce = all_reduce

result = train(load_config(sys.argv[1]))
print(json.dumps({"status": result.status,
                  "reads": [[*key, n] for key, n in sorted(reads.items())],
                  "all_reduces": dict(all_reduces)}))
"""


# Reads of device tensors inside the libraries' step, per optimiser step (DeepSpeed 0.19, torch
# 2.13; the counts are this file's record: a library upgrade that changes them fails here, update
# them and docs/benchmarks.md's gpu_check paragraph). On a GPU the first is a real wait: ZeRO-1/2
# with fp32 master weights checks the global gradient norm for inf/NaN with bool() twice in its
# step and once more before clipping (deepspeed/runtime/utils.py is_invalid_grad_norm). The second
# is not: AdamW reads its step counter, which torch keeps on the host unless capturable (fused
# AdamW on a GPU does not read it).
LIBRARY_READS_PER_STEP = {
    ("__bool__", "deepspeed/runtime/utils.py:is_invalid_grad_norm"): 3,
    ("item", "torch/optim/optimizer.py:_get_value"): 2,
}


@pytest.mark.slow
def test_a_training_step_reads_the_device_once(tmp_path, store):
    config = write_config(tmp_path / "c.yaml", store, tmp_path / "run", max_steps=6,
                          log_every_steps=100, checkpoint_every_steps=0,
                          validation={"every_steps": 0})
    proc = subprocess.run([sys.executable, "-c", COUNT_READS, str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=clean_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "done"
    steps = range(1, 6)  # steps 1-5 write no log row and are not the last
    assert out["all_reduces"] == {f"train_step, step {s}": 1 for s in steps}, out["all_reduces"]
    ours = [r for r in out["reads"] if r[2].startswith("pipeline/")]
    assert ours == [], f"host reads of device tensors in the step (each a GPU sync): {ours}"
    library = {(part, method, site): n for part, method, site, n in out["reads"]}
    expected = {(f"train_step, step {s}", method, site): n
                for s in steps for (method, site), n in LIBRARY_READS_PER_STEP.items()}
    assert library == expected, f"the libraries' reads changed: {library}"
