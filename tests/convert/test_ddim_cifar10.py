"""Converter for the official DDIM CIFAR-10 checkpoint (methods.md §7.1)."""
import numpy as np
import pytest
from flax import nnx

from bidm_jax.convert import ddim_cifar10 as conv
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional, check_shapes
from tests.convert import ddim_reference as ref


def random_state_dict(shapes, seed=0, scale=0.2):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in shapes.items():
        if k.rsplit(".", 2)[-2].startswith("norm") and k.endswith("weight"):
            sd[k] = 1.0 + 0.1 * rng.standard_normal(s)
        else:
            sd[k] = scale * rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 1)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def test_official_layout_counts():
    shapes = ref.official_shapes()
    assert len(shapes) == conv.NUM_TENSORS == 328
    assert sum(int(np.prod(s)) for s in shapes.values()) == 35_746_307
    # spot checks straight from methods.md §7.1
    assert shapes["temb.dense.0.weight"] == (512, 128)
    assert shapes["up.1.block.2.nin_shortcut.weight"] == (256, 384, 1, 1)
    assert shapes["up.0.block.0.conv1.weight"] == (128, 384, 3, 3)
    assert shapes["conv_out.weight"] == (3, 128, 3, 3)


def test_convert_matches_model_and_round_trips():
    sd = random_state_dict(ref.official_shapes())
    sd = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    params = conv.convert_state_dict(sd)
    fm = Functional(nnx.eval_shape(lambda: build_unet(conv.default_model_config(),
                                                      rngs=nnx.Rngs(0))))
    check_shapes(fm.shapes(), params, "converted")
    np.testing.assert_array_equal(params["conv_in.kernel"][1, 2, 0, 5],
                                  sd["conv_in.weight"][5, 0, 1, 2])
    plain = {k.removeprefix("module."): v for k, v in sd.items()}
    np.testing.assert_array_equal(params["temb.dense.1.kernel"][3, 7],
                                  plain["temb.dense.1.weight"][7, 3])
    back = conv.to_state_dict(params)
    assert set(back) == set(plain)
    for k in plain:
        np.testing.assert_array_equal(back[k], plain[k].astype(np.float32))


def test_shape_mismatch_names_the_tensor():
    sd = random_state_dict(ref.official_shapes())
    sd["down.1.attn.0.q.weight"] = np.zeros((256, 128, 1, 1))
    params = conv.convert_state_dict(sd)
    fm = Functional(nnx.eval_shape(lambda: build_unet(conv.default_model_config(),
                                                      rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"down\.1\.attn\.0\.q\.kernel"):
        check_shapes(fm.shapes(), params, "converted")


def test_converted_forward_equals_numpy_reference(tiny):
    cfg = tiny().model
    cfg.dropout = 0.0
    shapes = ref.official_shapes(ch=cfg.ch, ch_mult=cfg.ch_mult, nrb=cfg.num_res_blocks,
                                 attn=cfg.attn_resolutions, res=cfg.resolution)
    sd = random_state_dict(shapes, seed=3, scale=1.0)
    fm = Functional(build_unet(cfg, rngs=nnx.Rngs(0)))
    params = conv.convert_state_dict(sd)
    check_shapes(fm.shapes(), params, "converted")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8))
    t = np.array([3, 917])
    want = ref.forward(sd, x, t.astype(np.float64), cfg.ch, cfg.ch_mult, cfg.num_res_blocks,
                       cfg.attn_resolutions, cfg.resolution)
    import jax
    with jax.default_matmul_precision("float32"):
        got, carry = fm(params, x.transpose(0, 2, 3, 1).astype(np.float32), t)
    assert carry is None
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert np.abs(want).mean() > 0.1  # the check is not vacuous
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_missing_checkpoint_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_diffusion"):
        conv.convert_file(str(tmp_path / "model-790000.ckpt"), str(tmp_path / "out"))
