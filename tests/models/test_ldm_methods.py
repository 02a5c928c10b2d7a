"""BiDM and BinaryDM on the ldm_unet family (methods.md §2.1-2.6, §2.9, §3.1-3.2, §3.7, §8
items 5-6 and 14): the layer recipe per path, a distillation step of both students on a tiny
LDM UNet, and on the abstract paper models (nothing materialised) the layer lists, TBS
table and carry, block groups and the efficiency figures beside the papers' printed ones."""
import fnmatch
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bidm_jax import build
from bidm_jax.configlib import resolve_config, sibling
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.models.ldm_family import _config, ldm4_model_config, ldm8_model_config
from bidm_jax.modes.summary import published_summary, tbs_summary
from bidm_jax.quant import summarize
from bidm_jax.quant.layers import QConv, QDense
from tests.tiny import ROOT

# What an LDM BiDM/BinaryDM config sets beyond the model (docs/ldm_methods.md).
LDM_FIELDS = {"diffusion.loss_reduction": "mean", "distill.tbs_init": 0.3,
              "distill.spd_lambda": 1e-2, "quant.shortcut_scale_init": 0.3,
              "quant.shortcut_abs": True}


def ldm_config(method: str, model, **fields):
    c = sibling(os.path.join(ROOT, "configs", "default.py"), "default").get_config()
    for k, v in model.items():
        c.model[k] = v
    c.data.image_size = model.resolution
    c.quant.method = method
    c.train.batch_size = 2
    for key, value in {**LDM_FIELDS, **fields}.items():
        section, field = key.split(".")
        c[section][field] = value
    return resolve_config(c, "distill")


def tiny_model():
    """ch 32, one level with attention (CPU compile time: every block and layer kind of the
    LDM UNet but the resamplers, which the abstract paper models cover), R = 1, an 8x8x3
    latent: input_blocks 0-1, middle_block, output_blocks 0-1 (64 -> 32, FP/binary skips)."""
    return _config(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
                   in_channels=3, out_ch=3, resolution=8, num_head_channels=32)


def layers(module) -> dict:
    return {m.spec.path: m for _, m in nnx.iter_modules(module) if isinstance(m, (QConv, QDense))}


# --- the tiny students: recipe per path, one distillation step ------------------------------

@pytest.fixture(scope="module")
def tiny():
    """Both students on the tiny LDM UNet, their losses and gradients in one jitted program,
    then one Adam step (CPU compile time dominates: one program)."""
    out = {}
    x0 = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    for method in ("bidm", "binarydm"):
        # one basis on the middle block (group 1 of 2) to see both kinds
        c = ldm_config(method, tiny_model(), **({"quant.two_basis_groups": 1}
                                                if method == "binarydm" else {}))
        teacher = Functional(build_unet(c.model, rngs=nnx.Rngs(0)))
        # A trained teacher has no zero-initialised convs left (out_layers.3, proj_out, out.2):
        # without them, a binarized zero kernel (sigma = 0) passes no gradient at all.
        keys = iter(jax.random.split(jax.random.key(7), len(teacher.params)))
        tparams = {k: np.asarray(v + 0.02 * jax.random.normal(next(keys), v.shape))
                   for k, v in teacher.params.items()}
        trainable, s = build.distill_trainable(c, teacher, tparams)
        aux = s.fm.aux
        if trainable.calibrate_fn is not None:  # LRM's projections, LSQ steps
            params, aux = jax.jit(trainable.calibrate_fn)(trainable.params, aux, x0,
                                                          jax.random.key(3))
            trainable.params = params
        out[method] = (c, trainable, s, aux)

    def grads(params):
        return {m: jax.value_and_grad(lambda p, m=m: out[m][1].loss_fn(
            p, out[m][3], x0, jax.random.key(2), 1), has_aux=True)(params[m]) for m in out}

    res = jax.jit(grads)({m: v[1].params for m, v in out.items()})
    return out, res


def test_tiny_bidm_layer_recipe(tiny):
    out, _ = tiny
    c, _, s, _ = out["bidm"]
    ls = layers(s.fm.module(s.fm.params))
    for fp in ("time_embed.0", "time_embed.2", "input_blocks.0.0", "out.2",
               "output_blocks.0.0.skip_connection", "output_blocks.1.0.skip_connection"):
        assert not ls[fp].spec.binary, fp
    conv = ls["output_blocks.0.0.in_layers.2"]  # 64 -> 32: BNNConv2d with its FP shortcut
    assert conv.spec.binary and conv.spec.input_scale == "kconv" and conv.spec.shortcut_abs
    assert conv.shortcut is not None
    assert float(conv.shortcut_scale[...][0]) == pytest.approx(0.3)
    same = ls["middle_block.0.in_layers.2"]  # 32 -> 32: identity shortcut, no conv
    assert same.spec.shortcut == "scaled" and getattr(same, "shortcut", None) is None
    for path in ("input_blocks.1.1.qkv", "input_blocks.1.1.proj_out", "middle_block.1.qkv"):
        m = ls[path]  # BNNConv1d: shifted sign + weight scale, no K map, no shortcut
        assert m.spec.binary and m.spec.channel_shift and m.spec.weight == "channel_detached"
        assert m.spec.input_scale == "none" and m.spec.shortcut == "none"
        assert getattr(m, "kconv", None) is None and getattr(m, "shortcut", None) is None
    assert isinstance(ls["input_blocks.1.0.emb_layers.1"], QDense)
    assert ls["input_blocks.1.0.emb_layers.1"].spec.binary
    # quant.conv1d='conv2d': the attention projections get BNNConv2d's recipe
    c2 = ldm_config("bidm", tiny_model(), **{"quant.conv1d": "conv2d"})
    m = layers(build.quantized_model(c2, abstract=True))["input_blocks.1.1.qkv"]
    assert m.spec.input_scale == "kconv" and m.shortcut is not None
    # TBS: the 100 x 31 table at 0.3, every output block of the tiny UNet, columns n_in+1+j
    assert s.topology.n_columns == 31
    assert [m[2] for m in s.topology.mix] == [3, 4]
    table = [v for k, v in s.fm.params.items() if k.startswith("tbs")]
    assert len(table) == 1 and table[0].shape == (100, 31) and np.all(table[0] == 0.3)
    # SPD on every TimestepEmbedSequential output
    assert s.feature_names == build.family(c).timestep_outputs(s.fm.module(s.fm.params))
    assert len(s.feature_names) == 5 and c.distill.loss == "spd"


def test_tiny_binarydm_layer_recipe(tiny):
    out, _ = tiny
    c, _, s, _ = out["binarydm"]
    ls = layers(s.fm.module(s.fm.params))
    assert ls["output_blocks.0.0.skip_connection"].spec.binary  # binarized, unlike BiDM
    assert ls["input_blocks.0.0"].spec.weight == "lsq8" and ls["out.2"].spec.weight == "lsq8"
    assert not ls["time_embed.0"].spec.binary
    # groups (one level): 0 = the 8x8 blocks, 1 = the middle block; with
    # two_basis_groups=1 only group 0 gets the evolvable two bases
    assert ls["input_blocks.1.0.in_layers.2"].spec.weight == "ebb_staged"
    assert ls["output_blocks.0.1.qkv"].spec.group == 0
    assert ls["middle_block.0.in_layers.2"].spec.weight == "learnable_scale"
    assert ls["input_blocks.1.1.qkv"].spec.input_scale == "none"
    # LRM on every TimestepEmbedSequential output
    assert c.distill.loss == "lrm" and len(s.feature_names) == 5
    assert sum(k.startswith("lrm.proj.") for k in out["binarydm"][3]) == 5


@pytest.mark.parametrize("method", ["bidm", "binarydm"])
def test_tiny_student_step(tiny, method):
    """Finite loss and gradients; the binary kernels, the TBS table (BiDM) and the EBB
    scales (BinaryDM) receive gradient; one Adam step changes the parameters."""
    out, res = tiny
    (loss, (metrics, _)), g = res[method]
    assert np.isfinite(float(loss)) and float(metrics["distill_loss"]) > 0
    assert all(np.all(np.isfinite(v)) for v in g.values())
    nonzero = lambda name: float(jnp.abs(g[name]).sum()) > 0
    for layer in ("input_blocks.1.0.in_layers.2", "input_blocks.1.1.qkv",
                  "output_blocks.0.0.emb_layers.1"):
        assert nonzero(f"{layer}.kernel"), layer
    if method == "bidm":
        assert nonzero("input_blocks.1.1.qkv.tau")
        assert nonzero(next(k for k in g if k.startswith("tbs")))
    else:
        assert nonzero("output_blocks.0.0.skip_connection.ebb_sigma2")
    params = out[method][1].params
    opt = optax.adam(1e-3)
    updates, _ = opt.update(g, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert any(not np.array_equal(new[k], params[k]) for k in params)


# --- the paper models, abstract ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ldm4():
    """bidm and binarydm on LDM-4 (abstract): resolved config, model, summary."""
    out = {}
    for method in ("bidm", "binarydm"):
        c = ldm_config(method, ldm4_model_config())
        model = build.quantized_model(c, abstract=True)
        _, s = summarize(model, build.input_shape(c),
                         skip_patterns=build.family(c).skip_patterns)
        out[method] = (c, model, s)
    return out


def test_ldm4_layer_lists(ldm4):
    c, model, _ = ldm4["bidm"]
    ls = layers(model)
    binary = [p for p, m in ls.items() if m.spec.binary]
    skips = [p for p in ls if p.endswith(".skip_connection")]
    assert len(binary) == 104 and len(skips) == 15
    assert sorted(p for p, m in ls.items() if not m.spec.binary and p not in skips) == [
        "input_blocks.0.0", "out.2", "time_embed.0", "time_embed.2"]
    conv1d = [p for p in binary if p.endswith((".qkv", ".proj_out"))]
    assert len(conv1d) == 32 and all(ls[p].spec.shortcut == "none" for p in conv1d)
    size = lambda v: math.prod(v.get_value().shape)
    # methods.md §2.4: 15 FP shortcut convs (9,893,408 params) beside the FP skips (9,884,672)
    shortcuts = [m.shortcut for m in ls.values() if getattr(m, "shortcut", None) is not None]
    assert len(shortcuts) == 15
    assert sum(size(v) for sc in shortcuts for _, v in nnx.to_flat_state(nnx.state(sc))) \
        == 9_893_408
    assert sum(size(ls[p].kernel) for p in skips) == 9_884_672  # + 8,736 biases
    kernels = sum(size(m.kernel) for p, m in ls.items() if m.spec.binary or p in skips)
    assert kernels == 272_857_088  # methods.md §8 item 6
    tbs = tbs_summary(c, model)  # methods.md §2.5 / §8 item 14
    assert tbs["table_shape"] == [100, 31]
    assert [m[2] for m in tbs["mix"]] == list(range(17, 25))
    assert tbs["carry_floats_per_sample"] == 6_365_184
    b = layers(ldm4["binarydm"][1])
    assert sum(m.spec.binary for m in b.values()) == 121 and b[skips[0]].spec.binary


def test_ldm8_binarydm_groups():
    """The level rule on LDM-8's 5 levels: two bases on the 32x32 and 16x16 blocks."""
    c = ldm_config("binarydm", ldm8_model_config())
    ls = layers(build.quantized_model(c, abstract=True))
    two = {p for p, m in ls.items() if m.spec.weight == "ebb_staged"}
    blocks = lambda kind, idx: {p for p in ls if fnmatch.fnmatchcase(p, f"{kind}.{idx}.*")}
    assert two == set().union(*(blocks("input_blocks", i) for i in range(1, 6)),
                              *(blocks("output_blocks", i) for i in range(9, 15)))
    assert ls["middle_block.1.qkv"].spec.group == 5
    assert ls["output_blocks.0.0.in_layers.2"].spec.group == 4


def test_ldm4_efficiency_figures(ldm4):
    """methods.md §2.9, §3.7, §8 items 5-6: what the architecture gives, and the papers'
    printed totals (whose savings are 28.0x / 52.7x / 29.2x / 15.2x) beside them."""
    c, _, s = ldm4["bidm"]
    p, m = s["paper"], s["macs"]
    assert round(p["fp32_size_mib"], 1) == 1045.4 and round(p["fp32_flops"] / 1e9, 1) == 96.0
    assert round(p["bops"] / 1e9, 1) == 92.1                    # BiDM Table 4 BOPs
    assert round(m["unclaimed"] / 1e9, 2) == 5.18               # attention matmuls
    assert round((m["skip"] + m["shortcut"]) / 1e9, 1) == 7.8   # the FP 1x1 convs
    assert round(p["size_skips_binary_mib"], 2) == 37.10
    assert round(p["size_skips_binary_with_scales_mib"], 2) == 37.46
    pub = published_summary(c, {"paper": p, "stored": s["stored"]})
    assert (pub["printed"]["size_saving"], pub["printed"]["ops_saving"]) == (28.0, 52.7)
    # 37.3 lies between 1 bit + fp32 rest and the same + scales (27.9x ... 28.2x)
    assert p["size_skips_binary_mib"] < 37.3 < p["size_skips_binary_with_scales_mib"]
    assert round(pub["computed"]["ops"] / 1e9, 2) == 1.49       # FLOPs 0.05e9, not 0.38e9
    assert pub["honest"]["size_mib"] > 100 and pub["honest"]["ops_saving"] < 7.1
    c, _, s = ldm4["binarydm"]
    pub = published_summary(c, {"paper": s["paper"], "stored": s["stored"]})
    assert (pub["printed"]["size_saving"], pub["printed"]["ops_saving"]) == (29.2, 15.2)
    assert round(s["paper"]["ops"] / 1e9, 2) == 6.05            # W1A4 + W8A8 edges
    # §3.7: the printed 6.3 G = all conv+linear MACs at 1x4/64 + ~0.3e9
    assert round((s["paper"]["fp32_flops"] * 4 / 64 + 0.3e9) / 1e9, 1) == 6.3
    assert round(s["paper"]["size_skips_binary_mib"], 2) == 37.07
    # code mode keeps the two bases of groups 0-1 (39,839,744 weights): 1.146 bits per
    # weight (README: 1.1 bits)
    ls = layers(ldm4["binarydm"][1])
    size = lambda m: math.prod(m.kernel.get_value().shape)
    two = sum(size(m) for m in ls.values() if m.spec.weight == "ebb_staged")
    one = sum(size(m) for m in ls.values() if m.spec.bits_w == 1)
    assert (two, one) == (39_839_744, 272_857_088) and round((one + two) / one, 3) == 1.146


@pytest.mark.parametrize("name", ["lsun_bedrooms_ldm4_bidm", "lsun_churches_ldm8_bidm",
                                  "ffhq_ldm4_bidm"])
def test_bidm_ldm_configs_set_the_ldm_recipe(name):
    """The BiDM LDM config files carry the LDM code's values, not the CIFAR defaults."""
    c = sibling(os.path.join(ROOT, "configs", f"{name}.py"), name).get_config()
    for key, value in LDM_FIELDS.items():
        section, field = key.split(".")
        assert c[section][field] == value, key
    assert (c.quant.method, c.distill.tbs_topology, c.train.batch_size) == ("bidm", "code", 4)
