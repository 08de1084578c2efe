"""Networks: shapes for ds2/ds3, odd sizes, preset sizes, angular equivariance, checkpointing,
info."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ModelConfig, load_config
from pipeline.config.loader import ConfigError
from pipeline.models import PRESETS, LayerEnergyNet, VoxelUNet, build_models, count_parameters
from pipeline.physics.geometry import load_geometry
from pipeline.tools import cli, info

from conftest import inputs, randomize_zero_init

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("geometry", ["ds2", "ds3"])
def test_tiny_shapes(geometry):
    torch.manual_seed(0)
    shape = load_geometry(geometry).shape
    layer_net, unet = build_models(ModelConfig(preset="tiny"), load_geometry(geometry))
    x, t, cond, layers = inputs(shape)
    with torch.no_grad():
        assert layer_net(layers, t, cond).shape == (2, shape[0])
        assert unet(x, t, cond, layers).shape == (2, *shape)
        assert randomize_zero_init(unet)(x, t, cond, layers).abs().mean() > 0


def test_odd_sizes_and_bad_input():
    torch.manual_seed(0)
    unet = VoxelUNet((7, 6, 5), PRESETS["tiny"].unet, angle_downsample=3)
    assert unet.sizes == [(7, 6, 5), (4, 3, 3), (2, 3, 2)] and unet.angle_factor == 2
    x, t, cond, layers = inputs((7, 6, 5))
    assert unet(x, t, cond, layers).shape == (2, 7, 6, 5)
    with pytest.raises(ValueError, match="does not match"):
        unet(x[:, :, :4], t, cond, layers)
    with pytest.raises(ValueError, match="not regular"):
        build_models(ModelConfig(), load_geometry("ds1-pions"))


def test_preset_sizes():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            layer_net, unet = build_models(ModelConfig(preset=name), load_geometry("ds3"))
        counts[name] = count_parameters(layer_net) + count_parameters(unet)
    assert counts["tiny"] < 1_000_000
    assert 10e6 < counts["base"] < 20e6
    assert counts["large"] >= 100e6


@pytest.mark.parametrize("geometry,angle_downsample,shifts",
                         [("ds3", 1, [2, -4]), ("ds2", 0, [1, 6])])
def test_angular_roll_equivariance(geometry, angle_downsample, shifts):
    """Exact up to float rounding for shifts that are multiples of the total angular downsampling
    factor."""
    torch.manual_seed(1)
    shape = load_geometry(geometry).shape
    unet = randomize_zero_init(VoxelUNet(shape, PRESETS["tiny"].unet,
                                         angle_downsample=angle_downsample))
    assert unet.angle_factor == 2 ** angle_downsample
    x, t, cond, layers = inputs(shape, b=1)
    with torch.no_grad():
        y = unet(x, t, cond, layers)
        scale = float(y.abs().max())
        for k in shifts:
            torch.testing.assert_close(unet(torch.roll(x, k, dims=2), t, cond, layers),
                                       torch.roll(y, k, dims=2), rtol=1e-4, atol=1e-5 * scale)
        if angle_downsample:  # an odd shift does not commute with the stride-2 angular downsampling
            diff = unet(torch.roll(x, 1, dims=2), t, cond, layers) - torch.roll(y, 1, dims=2)
            assert diff.abs().max() > 1e-2 * scale


def test_activation_checkpointing_gives_same_gradients():
    shape = (9, 8, 5)
    torch.manual_seed(0)
    plain = randomize_zero_init(VoxelUNet(shape, PRESETS["tiny"].unet))
    ckpt = VoxelUNet(shape, PRESETS["tiny"].unet, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond, layers = inputs(shape)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x, t, cond, layers).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_layer_net_rejects_wrong_width():
    net = LayerEnergyNet(45, PRESETS["tiny"].layer_net)
    with pytest.raises(ValueError, match="45 layers"):
        net(torch.zeros(2, 44), torch.zeros(2), torch.zeros(2))


def test_info_counts_parameters_and_flops(capsys):
    cfg = load_config(CONFIGS / "smoke.yaml")
    result = info.model_info(cfg)
    layer_net, unet = build_models(cfg.model, load_geometry(cfg.data.geometry))
    assert result["voxel_net"]["parameters"] == count_parameters(unet)
    assert result["layer_net"]["parameters"] == count_parameters(layer_net)
    # the full-resolution convolutions alone: stem (4->8 channels) and output (8->1),
    # 2 FLOPs per MAC
    assert result["voxel_net"]["flops"] > 2 * 27 * (4 * 8 + 8) * 40500
    assert 0 < result["layer_net"]["flops"] < result["voxel_net"]["flops"]
    assert cli.COMMANDS["info"] == "pipeline.info"
    assert info.main(["--config", str(CONFIGS / "ds2.yaml")]) == 0
    out = capsys.readouterr().out
    assert ("preset base, geometry ds2" in out and "voxel backbone unet" in out
            and "GFLOP per shower" in out)


@pytest.mark.parametrize("override,message", [
    ("model.preset=huge", "model.preset: expected one of ['tiny', 'base', 'large']"),
    ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
    ("model.angle_downsample=-1", "model.angle_downsample: must be >= 0"),
    ("model.backbone=vit", "model.backbone: expected one of ['unet', 'transformer']"),
    ("model.patch=[5,4]", "model.patch: expected three positive sizes"),
    ("diffusion.prediction=eps", "diffusion.prediction: expected one of ['v', 'x']"),
    ("sampling.steps=0", "sampling.steps: must be >= 1"),
    ("diffusion.logsnr_min=30", "diffusion.logsnr_min: must be below logsnr_max"),
    ("sampling.eta=2", "sampling.eta: must be in [0, 1]"),
])
def test_model_and_diffusion_config_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("name,preset", [("smoke", "tiny"), ("ds2", "base"), ("ds3", "large")])
def test_shipped_configs_choose_presets(name, preset):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.preset == preset and cfg.sampling.steps >= 1


def test_fp32_first_last_keeps_precision_critical_layers_out_of_bf16():
    """Under bf16 autocast the layer network runs entirely in fp32 (bitwise as without autocast) and
    the U-Net's stem and output convolution in fp32 with TF32 off; the full-resolution activations
    after the stem are bf16; switched off, stem and output run in bf16."""
    torch.manual_seed(0)
    geometry = load_geometry("ds2")
    x, t, cond, layers = inputs(geometry.shape)
    seen: dict[str, object] = {}
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert defaults[0]  # cuDNN's default: TF32 convolutions on GPUs that have them
    for fp32 in (True, False):
        layer_net, unet = (randomize_zero_init(m).eval()
                           for m in build_models(ModelConfig(preset="tiny", fp32_first_last=fp32),
                                                 geometry))
        for name in ("stem", "out"):
            # the first call: under autocast
            def record(module, args, out, key=f"{name}{fp32}") -> None:
                seen.setdefault(key, out.dtype)
                seen.setdefault(f"{key} tf32", (torch.backends.cudnn.allow_tf32,
                                                torch.backends.cuda.matmul.allow_tf32))

            getattr(unet, name).conv.register_forward_hook(record)

        # the full-resolution activations
        def record_level0(module, args, key=f"level 0{fp32}") -> None:
            seen.setdefault(key, args[0].dtype)

        unet.down[0].register_forward_pre_hook(record_level0)
        with torch.no_grad():
            reference = layer_net(layers, t, cond)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = layer_net(layers, t, cond)
                v = unet(x, t, cond, layers)
            full = unet(x, t, cond, layers)
        assert torch.equal(low, reference) == fp32
        # bf16 elsewhere: close, not equal
        torch.testing.assert_close(v.float(), full, rtol=0.1, atol=0.05)
    assert seen == {"stemTrue": torch.float32, "outTrue": torch.float32,
                    "stemFalse": torch.bfloat16, "outFalse": torch.bfloat16,
                    "level 0True": torch.bfloat16, "level 0False": torch.bfloat16,
                    "stemTrue tf32": (False, False), "outTrue tf32": (False, False),
                    "stemFalse tf32": defaults, "outFalse tf32": defaults}
    assert (torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32) == defaults  # restored


def test_channels_last_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    geometry = load_geometry("ds2")
    _, unet = build_models(ModelConfig(preset="tiny"), geometry)
    unet = randomize_zero_init(unet)
    x, t, cond, layers = inputs(geometry.shape)
    plain = unet(x, t, cond, layers)
    plain.square().mean().backward()
    grads = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    formats = []
    unet.stem.conv.register_forward_hook(
        lambda m, args, out: formats.append(
            args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    unet.use_channels_last()
    fast = unet(x, t, cond, layers)
    assert formats == [True]
    fast.square().mean().backward()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    for a, b in zip((p.grad for p in unet.parameters()), grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
