"""CompVis LDM converters (methods.md §7.2) on random state dicts with the official key names
and layouts: Lightning and standalone files (PyTorch zip written without torch, .npz), EMA,
round trip, errors naming the tensor, and a converted tiny UNet against a NumPy forward."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from bidm_jax.convert import ldm as conv
from bidm_jax.convert.tensor_files import read_state_dict
from bidm_jax.models import build_unet
from bidm_jax.models.autoencoder import KL_F8, VQ_F4
from bidm_jax.models.functional import Functional
from bidm_jax.models.ldm_family import ldm4_model_config, ldm8_model_config
from bidm_jax.models.ldm_unet import num_heads_for
from tests.convert import ldm_reference as ref
from tests.convert import torch_zip


def tiny_unet_config(kind):
    """Tiny LDM-4-like (heads from num_head_channels) or LDM-8-like (num_heads, scale-shift,
    ResBlock up/down) UNets on 8x8 latents."""
    cfg = ldm4_model_config() if kind == "ldm4" else ldm8_model_config()
    cfg.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    resolution=8, in_channels=3, out_ch=3))
    cfg.update(dict(num_head_channels=16) if kind == "ldm4" else dict(num_heads=2))
    return cfg


def tiny_ae_config(base):
    return dataclasses.replace(base, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=8,
                               n_embed=16 if base.kind == "vq" else 0)


def random_torch_sd(shapes: dict, seed: int) -> dict:
    """Random tensors in the PyTorch layout of ``shapes`` (GroupNorm weights near 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in shapes.items():
        s = v.shape
        if len(s) == 1 and k.endswith("weight"):
            out[k] = 1.0 + 0.1 * rng.standard_normal(s)
        else:
            fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
            out[k] = rng.standard_normal(s) / np.sqrt(fan_in)
    return {k: v.astype(np.float32) for k, v in out.items()}


def unet_sd(cfg, seed=0):
    fm = Functional(nnx.eval_shape(lambda: build_unet(cfg, rngs=nnx.Rngs(0))))
    return random_torch_sd(conv.torch_layout(fm.shapes(), conv.is_conv1d), seed)


def ae_sd(cfg, seed=1):
    return random_torch_sd(conv.torch_layout(conv.first_stage_graph(cfg).shapes()), seed)


def lightning_ckpt(unet, ae, ema=True):
    sd = {conv.UNET_PREFIX + k: v for k, v in unet.items()}
    sd.update({conv.FIRST_STAGE_PREFIX + k: v for k, v in ae.items()})
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2
    sd.update({name: betas.astype(np.float32) for name in conv.DIFFUSION_BUFFERS})
    sd["scale_factor"] = np.asarray(0.25, np.float32)
    sd["ddim_sigmas"] = np.zeros(100, np.float32)
    if ema:
        sd.update({conv.ema_key(k): v + 1.0 for k, v in unet.items()})
        sd["model_ema.decay"] = np.asarray(0.9999, np.float32)
        sd["model_ema.num_updates"] = np.asarray(7, np.int64)
    return sd


def test_lightning_file_converts_with_ema_and_round_trips(tmp_path):
    cfg, ae_cfg = tiny_unet_config("ldm8"), tiny_ae_config(KL_F8)
    unet, ae = unet_sd(cfg), ae_sd(ae_cfg)
    sd = lightning_ckpt(unet, ae)
    marker = tmp_path / "ran"
    path = str(tmp_path / "model.ckpt")
    torch_zip.save({"state_dict": sd, "epoch": 3,
                    # what Lightning pickles beside the weights; none of it may be resolved
                    "callbacks": {torch_zip.Global("pytorch_lightning.callbacks.model_checkpoint",
                                                   "ModelCheckpoint"): {"best": 1.0}},
                    "hparams": torch_zip.Reduce(torch_zip.Global("os", "system"),
                                                (f"touch {marker}",))}, path)
    read = read_state_dict(path)
    assert not marker.exists() and set(read) == set(sd)
    out = str(tmp_path / "out")
    metas = conv.convert_file(path, out, "both", model_config=cfg, ae_config=ae_cfg)
    meta = json.load(open(os.path.join(out, "unet", "meta.json")))
    assert meta["sha256"] == metas["unet"]["sha256"] and meta["ema"] is True
    assert meta["scale_factor"] == 0.25 and meta["model_ema_num_updates"] == 7
    assert meta["beta_start"] == pytest.approx(0.0015) and meta["beta_end"] == \
        pytest.approx(0.0195)
    assert meta["ignored"] == ["ddim_sigmas"] or meta["ignored"] == []
    from bidm_jax.training import checkpoint
    params = checkpoint.load_params(os.path.join(out, "unet"), use_ema=False)
    ema = checkpoint.load_params(os.path.join(out, "unet"))
    back = conv.to_state_dict(params, conv.is_conv1d)
    assert set(back) == set(unet)
    for k in unet:
        np.testing.assert_array_equal(back[k], unet[k], err_msg=k)
    np.testing.assert_array_equal(ema["time_embed.0.kernel"], unet["time_embed.0.weight"].T + 1)
    np.testing.assert_array_equal(params["input_blocks.3.1.qkv.kernel"][0, 0],
                                  unet["input_blocks.3.1.qkv.weight"][:, :, 0].T)
    buffers = np.load(os.path.join(out, "unet", "diffusion_buffers.npz"))
    assert set(buffers.files) == set(conv.DIFFUSION_BUFFERS)
    model = conv.load_first_stage(os.path.join(out, "first_stage"))
    assert float(model.scale_factor.get_value()) == 0.25
    back = conv.to_state_dict(Functional(model).params)
    for k in ae:
        np.testing.assert_array_equal(back[k], ae[k], err_msg=k)


def test_standalone_first_stage_ignores_loss(tmp_path):
    ae_cfg = tiny_ae_config(VQ_F4)
    ae = ae_sd(ae_cfg, seed=4)
    path = str(tmp_path / "vq.npz")
    np.savez(path, **ae, **{"loss.discriminator.main.0.weight": np.zeros((4, 3, 4, 4))})
    metas = conv.convert_file(path, str(tmp_path / "out"), "both", ae_config=ae_cfg)
    assert list(metas) == ["first_stage"] and metas["first_stage"]["kind"] == "vq"
    assert metas["first_stage"]["scale_factor"] == 1.0
    with pytest.raises(ValueError, match="no UNet"):
        conv.convert_file(path, str(tmp_path / "o2"), "unet")
    with pytest.raises(ValueError, match="sha256"):
        conv.convert_file(path, str(tmp_path / "o3"), expect_sha256="0" * 64)


def test_mismatches_name_the_checkpoint_tensor():
    cfg = tiny_unet_config("ldm4")
    sd = lightning_ckpt(unet_sd(cfg), {}, ema=False)
    bad = dict(sd)
    bad["model.diffusion_model.input_blocks.1.0.emb_layers.1.weight"] = np.zeros((64, 128))
    with pytest.raises(ValueError, match=r"model\.diffusion_model\.input_blocks\.1\.0\."
                                         r"emb_layers\.1\.weight: expected \(32, 128\)"):
        conv.convert_unet(bad, cfg)
    bad = dict(sd)
    del bad["model.diffusion_model.middle_block.1.qkv.bias"]
    bad["model.diffusion_model.middle_block.1.channel_threshold"] = np.zeros((1, 64, 1))
    with pytest.raises(ValueError, match=r"middle_block\.1\.qkv\.bias: missing(.|\n)*"
                                         r"channel_threshold: unexpected"):
        conv.convert_unet(bad, cfg)
    with pytest.raises(ValueError, match="matches no preset"):
        conv.convert_unet(sd)  # a tiny UNet is neither LDM-4 nor LDM-8


def test_detects_paper_presets_from_the_first_conv():
    for name, make in (("ldm4", ldm4_model_config), ("ldm8", ldm8_model_config)):
        m = make()
        sd = {conv.UNET_PREFIX + "input_blocks.0.0.weight": np.zeros((m.ch, m.in_channels, 3, 3))}
        assert conv.detect_unet(sd) == name


@pytest.mark.parametrize("kind", ["ldm4", "ldm8"])
def test_converted_forward_equals_numpy_reference(kind):
    cfg = tiny_unet_config(kind)
    unet = unet_sd(cfg, seed=7)
    params, ema, _ = conv.convert_unet(lightning_ckpt(unet, {}, ema=False), cfg)
    assert ema is None
    fm = Functional(nnx.eval_shape(lambda: build_unet(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((2, 3, 8, 8)), np.array([3, 917])
    heads = lambda c: num_heads_for(c, cfg.num_heads, cfg.num_head_channels)
    updown = {"input_blocks.2.0": "down", "output_blocks.1.2": "up"} \
        if cfg.resblock_updown else {}
    sd64 = {k: v.astype(np.float64) for k, v in unet.items()}
    want = ref.forward(sd64, x, t.astype(np.float64), cfg.ch, heads, updown.get)
    with jax.default_matmul_precision("float32"):
        got, _ = jax.jit(fm.__call__)(params, x.transpose(0, 2, 3, 1).astype(np.float32), t)
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert np.abs(want).max() > 0.1  # non-trivial (random, not zero-init, out conv)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
