"""BinaryDM W1A4, its Baseline and LSQ (methods.md §3, §5): the layer recipe on the DDIM
CIFAR-10 UNet (paper and code), the progressive-binarization and stage-switch schedules, the
summary's bit accounting, and a tiny end-to-end distillation on 8 fake CPU devices with LRM
and the calibration step: resume, export and packed sampling. (That the sharded step equals
the 1-device step is checked for BiDM and Q-DM in tests/distill/test_distill_e2e.py.)"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax import build, export
from bidm_jax.distill import lrm
from bidm_jax.main import run
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.quant import summarize
from bidm_jax.training import checkpoint
from tests.conftest import resolved, tiny_config
from tests.methods.lowbit_helpers import assert_packed_samples_match, interrupted_distill, layer_specs, paper_config


def _cifar(method="binarydm", faithful_to="paper", **quant):
    return paper_config("cifar10_ddim_binarydm", {"faithful_to": faithful_to}, method=method,
                        **quant)


_specs = layer_specs


HEAD_TAIL = ("down.0.block.0.conv1", "down.0.downsample.conv", "down.1.block.1.conv2",
             "down.1.attn.0.q", "up.1.upsample.conv", "up.0.block.2.nin_shortcut",
             "up.1.block.2.temb_proj")
CENTRAL = ("down.1.downsample.conv", "down.2.block.0.conv1", "mid.attn_1.v",
           "mid.block_2.conv2", "up.2.upsample.conv", "up.3.block.0.nin_shortcut")


def test_cifar_layer_recipe_paper_and_code():
    """Two bases on the 32² and 16² block groups only (paper: staged), one elsewhere; the
    ResBlock 1×1 skips binary; first/last convs W8A8 (paper) or FP (code); time MLP FP."""
    paper, code = _specs(_cifar()), _specs(_cifar(faithful_to="code"))
    for specs, two, act in ((paper, "ebb_staged", "lsq4"), (code, "ebb", "lsq4_dynamic")):
        assert all(specs[p].weight == two for p in HEAD_TAIL)
        assert all(specs[p].weight == "learnable_scale" for p in CENTRAL)
        assert all(specs[p].act == act and specs[p].keep_bias for p in HEAD_TAIL + CENTRAL)
        assert not specs["temb.dense.0"].binary and not specs["temb.dense.1"].binary
    for p in ("conv_in", "conv_out"):
        assert (paper[p].weight, paper[p].act, paper[p].binary) == ("lsq8", "lsq8", True)
        assert not code[p].binary
    assert not any(s.gated for s in paper.values())
    assert all(s.gated for s in code.values() if s.binary)
    tiny = lambda m: _specs(resolved(tiny_config(**{"quant.method": m})))
    base = tiny("binarydm_baseline")
    assert {s.weight for s in base.values() if s.binary and s.bits_w == 1} == {"learnable_scale"}
    lsq = tiny("lsq")
    assert {s.weight for p, s in lsq.items() if s.binary and p not in ("conv_in", "conv_out")} \
        == {"lsq2"}


def test_summary_counts_the_stored_bits():
    """Code mode keeps two bases on the head/tail groups: 1.3587 bits per binarized weight
    on the DDIM CIFAR-10 UNet (LDM-4: 1.146, methods.md §3.2); paper mode stores one.
    BOPs = Σ b_w·b_a·MACs with b_a = 4."""
    outs = {}
    for ft in ("paper", "code"):
        c = _cifar(faithful_to=ft)
        _, outs[ft] = summarize(build.quantized_model(c, abstract=True), build.input_shape(c),
                                skip_patterns=build.family(c).skip_patterns)
    code, paper = outs["code"], outs["paper"]
    np.testing.assert_allclose(code["bits"]["per_weight_1bit"], 1.35867, atol=1e-5)
    assert paper["bits"]["per_weight_1bit"] == 1.0
    assert paper["bits"]["activation_layers"] == {"4": 109, "8": 2}
    binary_macs = paper["macs"]["binary"]
    edge = 2 * 32 * 32 * 3 * 128 * 9            # conv_in + conv_out MACs, 8x8 bits
    np.testing.assert_allclose(paper["macs"]["bops"], 4 * (binary_macs - edge) + 64 * edge)
    assert paper["paper"]["ops"] == paper["macs"]["bops"] / 64 + paper["paper"]["flops"]


def test_progressive_binarization_and_stage_switch_schedules():
    """Code: block group g turns binary at step G-1-g (middle first), the attention operands
    at step G; paper: the second basis is on before quant.ebb_switch_step, off from it, and
    L_EBB = tau·mean sigma_II only while it is on."""
    c = tiny_config(**{"quant.method": "binarydm", "distill.faithful_to": "code"})
    c = resolved(c)
    s = build.student(c)
    gates = [n for n in s.fm.aux if n.endswith("quant_on")]
    on = jax.jit(lambda step: s.method.step_aux(s.fm.aux, step, c))
    expect = {"mid.block_1.conv1": 0, "down.1.block.0.conv1": 1, "up.1.upsample.conv": 1,
              "down.0.block.0.conv1": 2, "down.1.attn.0.operands": 3}
    assert c.quant.attn_quant_start == 3
    for step in range(5):
        a = on(step)
        for layer, start in expect.items():
            assert float(a[f"{layer}.quant_on"]) == float(step >= start), (layer, step)
        assert all(float(a[n]) == 1.0 for n in gates) == (step >= 3)

    p = resolved(tiny_config(**{"quant.method": "binarydm", "quant.ebb_switch_step": 3}))
    s = build.student(p)
    hook = jax.jit(lambda step: s.method.step_aux(s.fm.aux, step, p))
    stages = [n for n in s.fm.aux if n.endswith("ebb_second")]
    assert stages and all(float(hook(2)[n]) == 1.0 for n in stages)
    assert all(float(hook(3)[n]) == 0.0 for n in stages)
    sig = [n for n in s.fm.params if n.endswith("ebb_sigma2")]
    want = p.quant.ebb_tau * np.mean([np.mean(s.fm.params[n]) for n in sig])
    reg, metrics = s.method.extra_loss(s.fm.params, hook(2), 2, p)
    np.testing.assert_allclose(float(reg), want, rtol=1e-6)
    assert float(s.method.extra_loss(s.fm.params, hook(3), 3, p)[0]) == 0.0
    code = resolved(tiny_config(**{"quant.method": "binarydm", "distill.faithful_to": "code"}))
    assert build.student(code).method.extra_loss(s.fm.params, {}, 0, code)[0] is None


# --- end to end ---------------------------------------------------------------------------

def _config(teacher, **over):
    # One level, no attention in it (compile time); the middle block's attention stays.
    c = tiny_config(**{"train.num_steps": 4, "ckpt.save_every": 2, "diffusion.sampler": "ddim",
                       "diffusion.eta": 0.0, "model.attn_resolutions": (), "model.ch_mult": (1,),
                       **over})
    c.quant.method = "binarydm"
    c.quant.ebb_switch_step = 2
    c.distill.teacher = teacher
    c.distill.lr = 1e-3
    return c


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, monkeypatch_module):
    """W1A4 (paper: staged EBB switching at step 2, LSQ 4-bit, 8-bit edges, LRM on the 5
    TimestepEmbed outputs of a one-level UNet) over the 8-device mesh, interrupted after 2
    steps and resumed to 4 (tests.methods.lowbit_helpers.interrupted_distill)."""
    return interrupted_distill(tmp_path_factory, monkeypatch_module, _config, "binarydm")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _ckpt(work, step):
    params, aux = checkpoint.load_params(os.path.join(work, "checkpoints"), step=step,
                                         use_ema=False, with_aux=True)
    return {"params": params, "aux": aux}


def test_distill_calibrates_projects_and_switches_stage(distilled):
    work, final, _ = distilled
    assert np.isfinite(final["loss"]) and final["nonfinite_total"] == 0
    info = json.load(open(os.path.join(work, "distill.json")))
    assert info["loss"] == "lrm" and info["lrm_mode"] == "paper" and info["bits_a"] == 4
    assert info["distill_features"][0] == "conv_in" and len(info["distill_features"]) == 5
    rows = [json.loads(line) for line in open(os.path.join(work, "logs", "metrics.jsonl"))]
    reg = {r["step"]: r["ebb_reg"] for r in rows if "ebb_reg" in r}
    assert reg[1] > 0 and reg[2] > 0 and reg[3] == 0 and reg[4] == 0  # steps 0-1 | 2-3
    assert all(r["distill_loss"] > 0 for r in rows if "distill_loss" in r)
    early, late = _ckpt(work, 2), _ckpt(work, 4)
    stage = [n for n in late["aux"] if n.endswith("ebb_second")]
    assert stage and all(float(early["aux"][n]) == 1.0 for n in stage)
    assert all(float(late["aux"][n]) == 0.0 for n in stage)
    # Calibrated LSQ steps (init 1.0), the middle attention's operands included, and LRM
    # projections (placeholder identity columns until calibrated; fixed afterwards).
    steps = [n for n in late["params"] if n.endswith("act_step")]
    assert len(steps) > 20 and all(float(early["params"][n]) != 1.0 for n in steps)
    assert any(".operands." in n for n in steps)
    for i, name in enumerate(info["distill_features"]):
        p = np.asarray(late["aux"][f"{lrm.PREFIX}.{i}"])
        np.testing.assert_allclose(p.T @ p, np.eye(p.shape[1]), atol=1e-4)
        assert not np.allclose(p, np.eye(*p.shape)), name
        np.testing.assert_array_equal(p, early["aux"][f"{lrm.PREFIX}.{i}"])


def test_resume_keeps_calibration_and_projection(distilled):
    """The resumed run starts from the checkpoint's calibrated steps and LRM projections
    (the calibration does not run again)."""
    work, _, started = distilled
    saved = _ckpt(work, 2)
    assert started["resumed"]
    for n, v in saved["aux"].items():
        np.testing.assert_array_equal(np.asarray(started["aux"][n]), np.asarray(v), n)
    for n in (n for n in saved["params"] if n.endswith("act_step")):
        np.testing.assert_array_equal(started["params"][n], saved["params"][n], n)


def test_packed_w1a4_sampling_equals_fake_quant(distilled):
    """Export: 1-bit sign planes (one per layer after the stage switch) with 4-bit integer
    activations, W8 edges as int8 levels. The packed forward equals the fake-quant forward
    to float rounding; over a sampling run a 4-bit rounding-boundary flip may change an
    image of this untrained model, so most (not all) sampled images must be identical."""
    work, _, _ = distilled
    c = _config("unused")
    report = run(c, work, "export")
    _, _, meta = export.read_packed(os.path.join(work, "export", "packed.npz"))
    layers = meta["packed_layers"]
    assert layers["conv_in"]["bits_w"] == 8 and layers["conv_in"]["planes"] == 0
    assert {v["planes"] for k, v in layers.items() if v["bits_w"] == 1} == {1}
    assert {v["bits_a"] for k, v in layers.items() if v["bits_w"] == 1} == {4}
    assert report["ratio_student_fp32_npz_over_packed"] > 2
    r = resolved(c, "sample")
    fm = build.sampling_model(r)[0]
    values = {**_ckpt_values(work)}
    pfm, _, _, pvalues = export.packed_sampling_model(r, os.path.join(work, "export",
                                                                        "packed.npz"))
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    t = jnp.array([10, 500, 990])
    a = jax.jit(lambda v: fm.module(v)(x, t, None)[0])(values)
    b = jax.jit(lambda v: pfm.module(v)(x, t, None)[0])(pvalues)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)
    # The Pallas packed_matmul (interpret mode on a CPU) on the 4-bit levels.
    r.export.kernel = "pallas"
    qfm, _, _, qvalues = export.packed_sampling_model(r, os.path.join(work, "export",
                                                                        "packed.npz"))
    q = jax.jit(lambda v: qfm.module(v)(x, t, None)[0])(qvalues)
    np.testing.assert_allclose(np.asarray(q), np.asarray(a), rtol=1e-4, atol=1e-4)
    assert_packed_samples_match(c, work)


def _ckpt_values(work):
    params, aux = checkpoint.load_params(os.path.join(work, "checkpoints"), with_aux=True)
    return {**params, **build.sampling_aux(aux)}


@pytest.mark.parametrize("method,faithful_to,quant", [
    ("binarydm", "code", {}),                      # two planes, per-batch steps, FP edges
    ("binarydm", "paper", {"bits_a": 32}),         # W1A32: ±1 weights, float activations
    ("binarydm_baseline", "paper", {"bits_a": 8}),  # W1A8
    ("lsq", "paper", {}),                          # W2A4: int8 levels of 2-bit weights
    ("qdm", "paper", {"taq": "per_t_bucket"}),     # W4A4, TaQ statistics per timestep group
])
def test_packed_forward_equals_fake_quant(method, faithful_to, quant):
    """pack_params + the packed graph reproduce the fake-quant forward of each variant."""
    c = tiny_config(**{"model.ch_mult": (1,), "model.attn_resolutions": ()})
    c.quant.method, c.distill.faithful_to = method, faithful_to
    for k, v in quant.items():
        c.quant[k] = v
    c = resolved(c)
    s = build.student(c, Functional(build_unet(c.model, rngs=nnx.Rngs(3))).params)
    values = {**s.fm.params, **s.fm.aux}
    packed, layers = export.pack_params(s.fm, values)
    planes = {b: i["planes"] for b, i in layers.items() if i["bits_w"] == 1}
    pfm = build.student(c, packed=export.DISK, packed_planes=planes).fm
    if method == "binarydm" and faithful_to == "code":
        assert {i["planes"] for i in layers.values()} == {2}  # one level: all head/tail
    if method == "lsq":
        assert {i["bits_w"] for i in layers.values()} == {2, 8}
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    t = jnp.array([10, 500, 990])
    a = jax.jit(lambda v: s.fm.module(v)(x, t, None)[0])(values)
    b = jax.jit(lambda v: pfm.module(v)(x, t, None)[0])(packed)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


def test_eq19_activation_planes_equal_the_int8_core():
    """BinaryDM App. B.2 Eq. 19: a 4-bit activation as four ±1 planes, a = 4β₁ + 2β₂ + β₃ +
    ½β₄ − ½; the W1A1 route over those planes equals the int8 core on the levels (both exact
    integer sums), two weight planes and zero padding included."""
    from bidm_jax.kernels.packing import pack_signs_host
    from bidm_jax.quant import packed as P

    levels = jnp.arange(-8, 8)
    planes, coefs, c0 = P.act_planes(levels, 4)
    assert coefs == [4.0, 2.0, 1.0, 0.5] and c0 == -0.5
    rebuilt = sum(c * p.astype(jnp.float32) for c, p in zip(coefs, planes)) + c0
    np.testing.assert_array_equal(rebuilt, levels)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(-8, 8, (2, 6, 6, 5)), jnp.int8)
    w = rng.normal(size=(2, 3 * 3 * 5, 4))
    words = jnp.asarray(np.stack([pack_signs_host(p) for p in w]))
    scale = jnp.asarray(rng.uniform(0.1, 1.0, (2, 4)), jnp.float32)
    kw = dict(kernel_size=3, in_features=5, stride=1, padding=1, group_words=1,
              opts=P.PackedOptions(kernel="xla"))
    np.testing.assert_allclose(P.conv_core_act_planes(x, words, scale, bits=4, **kw),
                               P.conv_core(x, words, scale, **kw), rtol=1e-6, atol=1e-5)
