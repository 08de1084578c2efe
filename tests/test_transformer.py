"""The patch-transformer voxel backbone and x-prediction: shapes, angular roll equivariance by whole patches,
checkpointing, fp32 edges, and every (backbone, prediction) combination training, distilling and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.data.stream import ShowerStream
from pipeline.diffusion import (
    CosineSchedule,
    NetworkSampling,
    distillation_losses,
    synthesize,
    training_losses,
)
from pipeline.models import PRESETS, VoxelTransformer, build_models, count_parameters
from pipeline.physics.geometry import load_geometry
from pipeline.physics.preprocessing import Preprocessor

from conftest import inputs, make_preprocessor, randomize_zero_init, stand_in_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = PRESETS["tiny"].transformer


@pytest.mark.parametrize("geometry,grid", [("ds2", (9, 4, 3)), ("ds3", (9, 5, 6))])
def test_tokens_and_shapes(geometry, grid):
    torch.manual_seed(0)
    shape = load_geometry(geometry).shape
    _, net = build_models(ModelConfig(preset="tiny", backbone="transformer"), load_geometry(geometry))
    assert isinstance(net, VoxelTransformer) and net.grid == grid
    x, t, cond, layers = inputs(shape)
    with torch.no_grad():
        assert net(x, t, cond, layers).shape == (2, *shape)
        assert net(x, t, cond, layers).abs().max() == 0  # adaLN-Zero and a zero output layer: starts at zero
        assert randomize_zero_init(net)(x, t, cond, layers).abs().mean() > 0
    odd = VoxelTransformer((7, 8, 5), TINY, (2, 4, 2))  # L and R padded to whole patches, cropped back
    x, t, cond, layers = inputs((7, 8, 5))
    assert odd(x, t, cond, layers).shape == (2, 7, 8, 5)
    with pytest.raises(ValueError, match="model.patch"):
        VoxelTransformer((7, 8, 5), TINY, (2, 3, 2))


def test_angular_roll_equivariance_by_whole_patches():
    """Rotary angle positions: rolling by a multiple of the angle patch rolls the output; by less, it does not."""
    torch.manual_seed(1)
    shape = load_geometry("ds2").shape
    net = randomize_zero_init(VoxelTransformer(shape, TINY, (5, 4, 3))).eval()
    x, t, cond, layers = inputs(shape, b=1)
    with torch.no_grad():
        y = net(x, t, cond, layers)
        scale = float(y.abs().max())
        for k in (4, -8, 12):
            torch.testing.assert_close(net(torch.roll(x, k, dims=2), t, cond, layers), torch.roll(y, k, dims=2),
                                       rtol=1e-4, atol=1e-5 * scale)
        diff = net(torch.roll(x, 1, dims=2), t, cond, layers) - torch.roll(y, 1, dims=2)
        assert diff.abs().max() > 1e-2 * scale


def test_checkpointing_and_fp32_edges():
    shape = (9, 8, 5)
    torch.manual_seed(0)
    plain = randomize_zero_init(VoxelTransformer(shape, TINY, (3, 2, 2)))
    ckpt = VoxelTransformer(shape, TINY, (3, 2, 2), checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond, layers = inputs(shape)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x, t, cond, layers).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    seen = []
    plain.embed.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    plain.out.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain(x, t, cond, layers)
    assert seen == [torch.float32, torch.float32]


def test_presets_are_sized_as_designed():
    """base costs well under the base U-Net per evaluation; large passes 100M parameters (pipeline.info has the FLOPs)."""
    geometry = load_geometry("ds3")
    counts = {p: count_parameters(build_models(ModelConfig(preset=p, backbone="transformer"), geometry)[1])
              for p in ("tiny", "base", "large")}
    assert counts["tiny"] < 1e6 < counts["base"] < 100e6 < counts["large"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return stand_in_store(tmp_path_factory.mktemp("transformer"), "ds2", 64)


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
@pytest.mark.parametrize("prediction", ["v", "x"])
def test_every_backbone_and_prediction_trains_distills_and_samples(store, backbone, prediction):
    """Thirty Adam steps on stand-in showers lower the loss; a distillation loss and a 2-step sample come out
    finite and physical."""
    torch.manual_seed(0)
    pre = Preprocessor.from_store(store)
    layer_net, voxel_net = build_models(ModelConfig(preset="tiny", backbone=backbone), store.geometry)
    opt = torch.optim.Adam([*layer_net.parameters(), *voxel_net.parameters()], lr=3e-3)
    stream = ShowerStream(store, 4, seed=0, num_workers=1, shuffle_chunks=4)
    schedule, total = CosineSchedule(), []
    for _, batch in zip(range(30), stream):
        p = pre(batch["showers"], batch["energies"])
        losses = training_losses(layer_net, voxel_net, p.layers, p.voxels, p.cond, schedule,
                                 generator=torch.Generator().manual_seed(0), prediction=prediction)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        total.append(losses["loss"].item())
    assert np.isfinite(total).all() and np.mean(total[-8:]) < 0.85 * np.mean(total[:8]), total
    layer_net.eval()
    voxel_net.eval()
    distilled = distillation_losses(layer_net, voxel_net, layer_net, voxel_net, p.layers, p.voxels, p.cond, schedule,
                                    2, torch.Generator().manual_seed(1), prediction)
    assert all(torch.isfinite(v) for v in distilled.values())
    showers = synthesize(torch.tensor([1e4, 1e5], dtype=torch.float64), [1, 2], NetworkSampling(layer_net, 2, prediction),
                         NetworkSampling(voxel_net, 2, prediction), make_preprocessor("ds2")[0])
    assert showers.shape == (2, *store.geometry.shape) and torch.isfinite(showers).all() and (showers >= 0).all()
