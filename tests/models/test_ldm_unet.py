"""The ldm_unet family: exact paper sizes (abstract, nothing materialised), shapes, taps, TBS
columns, block groups, layer policy, and a tiny forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax.models import build_unet, count_params, get_family
from bidm_jax.models.layers import FPFactory
from bidm_jax.models.ldm_blocks import timestep_embedding
from bidm_jax.models.ldm_family import ldm4_model_config, ldm8_model_config

FAMILY = get_family("ldm_unet")


def _abstract(cfg):
    factory = FPFactory()
    model = nnx.eval_shape(lambda: build_unet(cfg, rngs=nnx.Rngs(0), factory=factory))
    return model, factory.paths


@pytest.fixture(scope="module", params=["ldm4", "ldm8"])
def paper(request):
    cfg = {"ldm4": ldm4_model_config, "ldm8": ldm8_model_config}[request.param]()
    model, paths = _abstract(cfg)
    graphdef, state = nnx.split(model)
    r, c = cfg.resolution, cfg.in_channels

    def run(st, x, t):
        feats = {}
        eps, _ = nnx.merge(graphdef, st)(x, t, None, features=feats)
        return eps, feats

    eps, feats = jax.eval_shape(run, state, jax.ShapeDtypeStruct((2, r, r, c), jnp.float32),
                                jax.ShapeDtypeStruct((2,), jnp.int32))
    return request.param, cfg, model, paths, eps, feats


def test_paper_counts_shapes_and_taps(paper):
    name, cfg, model, paths, eps, feats = paper
    want = {"ldm4": (274_056_163, 25, (2, 64, 64, 3)), "ldm8": (294_966_916, 31, (2, 32, 32, 4))}
    n_params, n_outputs, shape = want[name]
    assert count_params(model) == n_params
    assert round(n_params * 4 / 2 ** 20, 2) == {"ldm4": 1045.44, "ldm8": 1125.21}[name]
    assert eps.shape == shape
    outputs = FAMILY.timestep_outputs(model)
    assert len(outputs) == n_outputs and set(feats) == set(outputs)
    assert FAMILY.spd_features(model) == outputs
    assert FAMILY.input_shape(type("C", (), {"model": cfg})) == shape[1:]
    assert len(paths) == len(set(paths))


def test_layer_policy_covers_every_layer(paper):
    import fnmatch
    name, cfg, model, paths, *_ = paper
    match = lambda p, pats: any(fnmatch.fnmatchcase(p, q) for q in pats)
    fp = [p for p in paths if match(p, FAMILY.fp_layers)]
    binary = [p for p in paths if not match(p, FAMILY.fp_layers)]
    assert all(match(p, FAMILY.binary_layers) for p in binary)
    skips = [p for p in fp if match(p, FAMILY.skip_patterns)]
    assert sorted(set(fp) - set(skips)) == ["input_blocks.0.0", "out.2", "time_embed.0",
                                            "time_embed.2"]
    assert all(p.endswith(".skip_connection") for p in skips)
    if name == "ldm4":  # methods.md §8 item 6: 272,857,088 binarizable, 1,199,075 FP
        from bidm_jax.models.functional import Functional
        params = Functional(model).params
        size = lambda pats: sum(int(np.prod(v.shape)) for k, v in params.items()
                                if match(k.rsplit(".", 1)[0], pats) and k.endswith("kernel"))
        edge = ("input_blocks.0.0", "out.2", "time_embed.0", "time_embed.2")
        assert size(("*",)) - size(edge) == 272_857_088
        assert count_params(model) - (size(("*",)) - size(edge)) == 1_199_075


def test_official_state_dict_layout(paper):
    """The converter's PyTorch layout of the model: methods.md §7.2 / §8 item 3 counts and
    shapes (Conv1d attention, 2 C_out scale-shift projections, op / conv resamplers)."""
    from bidm_jax.convert.ldm import NUM_TENSORS, is_conv1d, torch_layout
    from bidm_jax.models.functional import Functional
    name, cfg, model, *_ = paper
    layout = {k: v.shape for k, v in torch_layout(Functional(model).shapes(), is_conv1d).items()}
    assert len(layout) == NUM_TENSORS[name] == {"ldm4": 368, "ldm8": 520}[name]
    assert sum(int(np.prod(s)) for s in layout.values()) == count_params(model)
    if name == "ldm4":
        assert layout["time_embed.0.weight"] == (896, 224)
        assert layout["input_blocks.0.0.weight"] == (224, 3, 3, 3)
        assert layout["input_blocks.3.0.op.weight"] == (224, 224, 3, 3)
        assert layout["input_blocks.4.0.skip_connection.weight"] == (448, 224, 1, 1)
        assert layout["input_blocks.4.1.qkv.weight"] == (1344, 448, 1)
        assert layout["input_blocks.4.1.proj_out.weight"] == (448, 448, 1)
        assert layout["input_blocks.4.1.norm.weight"] == (448,)
        assert layout["middle_block.1.qkv.weight"] == (2688, 896, 1)
        assert layout["output_blocks.0.0.in_layers.2.weight"] == (896, 1792, 3, 3)
        assert layout["output_blocks.2.2.conv.weight"] == (896, 896, 3, 3)
        assert layout["output_blocks.8.2.conv.weight"] == (448, 448, 3, 3)
        assert layout["output_blocks.9.0.skip_connection.weight"] == (224, 672, 1, 1)
        assert layout["out.2.weight"] == (3, 224, 3, 3)
        assert "output_blocks.11.1.qkv.weight" not in layout  # no attention at 64x64
    else:
        assert layout["input_blocks.0.0.weight"] == (192, 4, 3, 3)
        assert layout["input_blocks.1.0.emb_layers.1.weight"] == (384, 768)  # 2 C_out
        assert layout["input_blocks.3.0.in_layers.2.weight"] == (192, 192, 3, 3)  # ResBlock down
        assert layout["input_blocks.1.1.qkv.weight"] == (576, 192, 1)
        assert "input_blocks.13.1.qkv.weight" not in layout  # no attention at 2x2
        assert layout["output_blocks.2.1.out_layers.3.weight"] == (768, 768, 3, 3)  # ResBlock up
        assert layout["output_blocks.5.2.emb_layers.1.weight"] == (1536, 768)
        assert layout["out.2.weight"] == (4, 192, 3, 3)


def test_tbs_columns_and_cache_size(paper):
    name, cfg, model, paths, eps, feats = paper
    mix, n_cols = FAMILY.tbs_mix(model, "code")
    blocks = {"ldm4": range(4, 12), "ldm8": range(7, 15)}[name]
    cols = {"ldm4": range(17, 25), "ldm8": range(23, 31)}[name]
    assert [m[0] for m in mix] == [f"output_blocks.{j}" for j in blocks]
    assert [m[0] for m in mix] == [m[1] for m in mix]
    assert [m[2] for m in mix] == list(cols) and n_cols == 31
    if name == "ldm4":  # methods.md §2.5: 6,365,184 cached floats per sample
        assert sum(int(np.prod(feats[m[0]].shape[1:])) for m in mix) == 6_365_184
    paper_mix, n = FAMILY.tbs_mix(model, "paper", 8)
    assert n == 8 and [m[0] for m in paper_mix] == [m[0] for m in mix]
    with pytest.raises(ValueError, match="tbs_topology"):
        FAMILY.tbs_mix(model, "other")


def test_block_groups():
    g4 = lambda p: FAMILY.block_group(p, ldm4_model_config())
    # the released code's formula on LDM-4: idx // 3 down, 3 - idx // 3 up, 4 middle
    for i in range(12):
        assert g4(f"input_blocks.{i}.0.in_layers.2") == i // 3
        assert g4(f"output_blocks.{i}.1.qkv") == 3 - i // 3
    assert g4("middle_block.1.qkv") == 4 and g4("time_embed.0") is None and g4("out.2") is None
    g8 = lambda p: FAMILY.block_group(p, ldm8_model_config())
    assert [g8(f"output_blocks.{i}.0.in_layers.2") for i in range(15)] == \
        [4] * 3 + [3] * 3 + [2] * 3 + [1] * 3 + [0] * 3
    assert g8("input_blocks.14.0.in_layers.2") == 4 and g8("middle_block.0.in_layers.2") == 5
    assert FAMILY.num_groups(ldm4_model_config()) == 5
    assert FAMILY.num_groups(ldm8_model_config()) == 6


def test_timestep_embedding_is_cos_first():
    emb = np.asarray(timestep_embedding(jnp.array([0.0, 3.0]), 8))
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    f = np.exp(-np.log(1e4) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * f), np.sin(3 * f)]),
                               rtol=1e-5, atol=1e-6)


def tiny_config(**kw):
    cfg = ldm8_model_config()
    cfg.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    resolution=8, in_channels=3, out_ch=3, num_heads=2))
    cfg.update(kw)
    return cfg


def test_tiny_forward_taps_mixer_and_zero_init():
    from bidm_jax.models.functional import Functional
    fm = Functional(build_unet(tiny_config(), rngs=nnx.Rngs(0)))
    x, t = jnp.ones((2, 8, 8, 3)), jnp.array([3, 950])
    seen = []

    def mixer(name, h, carry, t):
        seen.append(name)
        return h, carry + 1

    @jax.jit
    def run(p):
        feats = {}
        eps, carry = fm(p, x, t, jnp.int32(0), mixer=mixer, features=feats)
        return eps, carry, feats

    eps, carry, feats = run(fm.params)
    assert eps.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(eps, 0.0)  # out.2 starts at zero (zero_module)
    model = fm.module(fm.params)
    assert int(carry) == len(seen) == 9 and seen == FAMILY.timestep_outputs(model)
    assert feats["input_blocks.2"].shape == (2, 4, 4, 32)   # the ResBlock down
    assert feats["output_blocks.1"].shape == (2, 8, 8, 64)  # the ResBlock up
    assert model.input_blocks[2][0].updown == "down"


def test_validate_rejects_downsample_factors():
    cfg = type("C", (), {})()
    cfg.model = ldm4_model_config()
    FAMILY.validate(cfg)
    cfg.model.attn_resolutions = (8, 4, 2)  # CompVis's ds values, not resolutions
    with pytest.raises(ValueError, match="downsample factors"):
        FAMILY.validate(cfg)
    cfg.model = ldm4_model_config()
    cfg.model.num_head_channels = 96
    with pytest.raises(ValueError, match="num_head_channels"):
        FAMILY.validate(cfg)
