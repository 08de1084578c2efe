"""train.networks: the layer-energy and voxel networks trained as separate runs, distilled per
network, and combined at generation (generate.layer_model)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from train_runs import clean_env, run_group, train_cmd, write_config

from pipeline.config import ModelConfig, load_config
from pipeline.config.loader import ConfigError
from pipeline.data.run_record import RunRecord, read_record
from pipeline.data.samples import open_sample
from pipeline.data.shower_store import ShowerStore
from pipeline.data.stream import ShowerStream, StreamError
from pipeline.diffusion import CosineSchedule
from pipeline.generation.sampler import load_sampler, load_voxel_sampler
from pipeline.launch.plan import chain
from pipeline.models import build_models
from pipeline.models.ema_weights import load_ema_weights
from pipeline.physics.geometry import load_geometry
from pipeline.training.losses import DiffusionLoss, DistillationLoss

from conftest import make_preprocessor, run_module


class _Refuses(torch.nn.Module):
    """A voxel network that must not be called."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, *args):  # noqa: ANN002, ANN201
        raise AssertionError("the frozen network was called")


def test_a_pair_trains_only_its_networks():
    pre, showers, energies = make_preprocessor("ds2")
    p = pre(showers.float(), energies)
    layer_net, _ = build_models(ModelConfig(), load_geometry("ds2"))
    pair = DiffusionLoss(layer_net, _Refuses(), CosineSchedule(), networks=["layers"])
    assert (not pair.voxel_net.w.requires_grad
            and all(q.requires_grad for q in pair.layer_net.parameters()))
    out = pair(p.layers, None, p.cond, generator=torch.Generator().manual_seed(0))
    assert out["voxel"].item() == 0 and out["loss"].item() == out["layer"].item() > 0
    out["loss"].backward()
    assert pair.voxel_net.w.grad is None and pair.layer_net.inp.weight.grad is not None
    # with both networks, the layer loss is the same for the same generator
    # (the draws keep their order)
    _, voxel_net = build_models(ModelConfig(), load_geometry("ds2"))
    both = DiffusionLoss(layer_net, voxel_net, CosineSchedule())(
        p.layers, p.voxels, p.cond, generator=torch.Generator().manual_seed(0))
    # other times: t_voxel drawn
    assert both["voxel"].item() > 0 and both["layer"].item() != out["layer"].item()
    student = DistillationLoss(layer_net, _Refuses(), CosineSchedule(), pair, 2,
                               networks=["layers"])
    d = student(p.layers, None, p.cond, generator=torch.Generator().manual_seed(0))
    assert d["voxel"].item() == 0 and torch.isfinite(d["layer"])


def test_the_layer_view_of_a_stream_sums_each_showers_layers(store):
    s = ShowerStore(store)
    showers = ShowerStream(s, 8, seed=3, shuffle_chunks=2, num_workers=1)
    layers = ShowerStream(s, 8, seed=3, shuffle_chunks=2, num_workers=1, view="layers")
    a, b = next(iter(showers)), next(iter(layers))
    assert torch.equal(a["index"], b["index"]) and "showers" not in b
    expected = a["showers"].double().sum(dim=(2, 3))
    torch.testing.assert_close(b["layer_energies"].double(), expected, rtol=1e-6, atol=1e-6)
    resident = ShowerStream(s, 8, seed=3, num_workers=1, view="layers", resident=True)
    assert next(iter(resident))["layer_energies"].shape == (8, 45)
    with pytest.raises(StreamError, match="saved view='showers'"):
        layers.load_state_dict(showers.state_dict())
    with pytest.raises(StreamError, match="view"):
        ShowerStream(s, 8, view="voxels")  # type: ignore[arg-type]


def test_the_layers_of_layer_energies_equal_the_layers_of_showers():
    pre, showers, energies = make_preprocessor("ds2")
    p = pre(showers, energies)
    q = pre.from_layer_energies(showers.sum(dim=(2, 3)), energies)
    assert q.voxels is None
    torch.testing.assert_close(q.layers, p.layers)
    torch.testing.assert_close(q.cond, p.cond)
    with pytest.raises(ValueError, match="45 layers"):
        pre.from_layer_energies(showers.sum(dim=(1, 2)), energies)


def test_networks_config_errors_and_the_chain_of_a_layers_run(tmp_path, store):
    config = write_config(tmp_path / "c.yaml", store, tmp_path / "run")
    names = [s.name for s in chain(load_config(config, ["train.networks=[layers]",
                                                        "sampling.steps=16"]))]
    # its layer network goes to another run's generation
    assert names == ["convert", "train", "distill:1"]
    with pytest.raises(ConfigError, match="train.networks"):
        load_config(config, ["train.networks=[layers, layers]"])
    with pytest.raises(ConfigError, match=r"train.networks\[0\]"):
        load_config(config, ["train.networks=[energies]"])


@pytest.mark.slow
def test_separate_runs_distill_and_generate_together(tmp_path, store):
    """A layers-only run (with its monitor) and a voxels-only run, the layers distilled one stage, a
    sample from both; each run leaves the other network at its initial weights; wrong combinations
    are refused."""
    runs, stderr = {}, {}
    for net in ("layers", "voxels"):
        config = write_config(tmp_path / f"{net}.yaml", store, tmp_path / net, max_steps=6,
                              networks=[net], monitor={"every_steps": 6, "showers": 16},
                              checkpoint_every_steps=3)
        raw = yaml.safe_load(config.read_text())
        raw["sampling"] = {"steps": 4}
        raw["distill"] = {"final_steps": 2, "max_steps": 4, "warmup_steps": 1}
        raw["generate"] = {"n": 32, "block_size": 32, "per_rank_batch_size": 16,
                           "layout": {"chunk_rows": 16, "shard_rows": 32},
                           "out": str(tmp_path / f"{net}.zarr"),
                           "energy_range": [1000.0, 100000.0]}
        config.write_text(yaml.safe_dump(raw))
        proc = run_group(train_cmd(config), timeout=300, env=clean_env(OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[net], stderr[net] = config, proc.stderr
    done = {net: read_record(tmp_path / net) for net in runs}
    assert done["layers"].networks == ("layers",) and done["voxels"].networks == ("voxels",)
    monitor = (tmp_path / "layers" / "logs" / "monitor.csv").read_text().splitlines()
    assert len(monitor) == 3 and "monitor step 6 (layer network): E_tot/E_inc" in stderr["layers"]

    # the network a run does not train keeps the initial weights
    # (the same seed builds the same networks)
    ema = {net: load_ema_weights(done[net].ema)[0] for net in runs}
    torch.manual_seed(7)
    init_layer, init_voxel = build_models(ModelConfig(), load_geometry("ds2"))
    assert all(torch.equal(v, init_voxel.state_dict()[k])
               for k, v in ema["layers"]["voxel_net"].items())
    assert all(torch.equal(v, init_layer.state_dict()[k])
               for k, v in ema["voxels"]["layer_net"].items())
    assert not all(torch.equal(v, init_layer.state_dict()[k])
                   for k, v in ema["layers"]["layer_net"].items())

    proc = run_module("pipeline.distill", "--config", str(runs["layers"]), "--stage", "1",
                      env=clean_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = tmp_path / "layers" / "distill" / "stage_1"
    assert read_record(stage).networks == ("layers",)

    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="trained the layer network alone"):
        load_sampler(tmp_path / "layers", cpu)
    with pytest.raises(ConfigError, match="set generate.layer_model"):
        load_sampler(tmp_path / "voxels", cpu)
    with pytest.raises(ConfigError, match="did not train the layer network"):
        load_sampler(tmp_path / "voxels", cpu, layer_model_dir=tmp_path / "voxels")
    sampler = load_sampler(tmp_path / "voxels", cpu, layer_model_dir=stage)
    assert (sampler.layer.steps == 2 and sampler.voxel.steps == 4
            and sampler.info["layer_model"]["stage"] == 1)
    with pytest.raises(ConfigError, match="did not train the voxel network"):
        load_voxel_sampler(tmp_path / "layers", cpu)
    voxels_alone = load_voxel_sampler(tmp_path / "voxels", cpu)
    given = torch.rand(2, 45) * 100.0 + 1.0
    showers = voxels_alone(torch.tensor([[5000.0], [20000.0]]), [1, 2], given, threshold=False)
    # the voxel network keeps the given layers
    assert torch.allclose(showers.sum(dim=(2, 3)), given, rtol=1e-3)

    proc = run_module("pipeline.generate", "--config", str(runs["voxels"]),
                      "--model", str(tmp_path / "voxels"),
                      "--layer-model", str(stage), env=clean_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "voxels.zarr.manifest.json").read_text())
    assert (manifest["model"]["layer_model"]["model_dir"] == str(stage.resolve())
            and manifest["n"] == 32)
    sample = open_sample(str(tmp_path / "voxels.zarr"), "ds2")
    block = next(sample.blocks())
    assert (np.isfinite(block.showers).all() and (block.showers >= 0).all()
            and block.showers.sum() > 0)


def test_a_layer_model_must_share_geometry_statistics_and_schedule(tmp_path, monkeypatch, store):
    from pipeline.generation import sampler as sampler_module

    stats = ShowerStore(store).stats
    cfg = load_config(write_config(tmp_path / "c.yaml", store, tmp_path / "run"))

    def run(networks, geometry="ds2", shift=0.0, logsnr_max=20.0):
        other = {**stats, "log_energy": {**stats["log_energy"],
                                         "mean": np.asarray(stats["log_energy"]["mean"]) + shift}}
        c = load_config(write_config(tmp_path / "d.yaml", store, tmp_path / "run"),
                        [f"diffusion.logsnr_max={logsnr_max}"])
        return sampler_module._Run(tmp_path / "layers", record(c, networks, geometry), c, {}, other)

    def record(c, networks, geometry) -> RunRecord:
        return dataclasses.replace(RunRecord.of_export(c, tmp_path, tmp_path / "ema",
                                                       sample_steps=4),
                                   networks=tuple(networks), geometry=geometry)

    voxels = sampler_module._Run(tmp_path / "voxels", record(cfg, ["voxels"], "ds2"), cfg, {},
                                 stats)
    for kwargs, message in (({"networks": ["voxels"]}, "did not train the layer network"),
                            ({"networks": ["layers"], "geometry": "ds3"}, "was trained on ds3"),
                            ({"networks": ["layers"], "shift": 0.1}, "standardises log_energy"),
                            ({"networks": ["layers"], "logsnr_max": 15.0},
                             "another noise schedule")):
        monkeypatch.setattr(sampler_module, "_read_run", lambda *a, kw=kwargs: run(**kw))
        with pytest.raises(ConfigError, match=message):
            sampler_module._layer_run(voxels, tmp_path / "layers", torch.device("cpu"))
    monkeypatch.setattr(sampler_module, "_read_run", lambda *a: run(["layers"]))
    assert (sampler_module._layer_run(voxels, tmp_path / "layers", torch.device("cpu")).dir
            == tmp_path / "layers")
