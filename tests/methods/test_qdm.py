"""Q-DM (methods.md §4): the layer recipe and its flags, the bookkeeping of §4.6 item 1 (both
OPs accountings), TaQ's unit facts (§4.6 item 3) and modes, the LSQ variants Q-DM adds, and
NeM's targets, unrolled form and gradients. (LSQ's 4-bit values, §4.6 item 2:
tests/quant/test_lowbit_quantizers.py; the sharded Q-DM step: tests/distill/test_distill_e2e.py;
the end-to-end run: tests/methods/test_qdm_e2e.py.)"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax import build
from bidm_jax.configlib import sibling
from bidm_jax.diffusion import schedules
from bidm_jax.distill import nem
from bidm_jax.main import run
from bidm_jax.models.functional import aux_mode, timestep_context
from bidm_jax.quant import registry, summarize
from bidm_jax.quant.taq import TaQ, TaQSpec
from tests.conftest import ROOT, resolved, tiny_config
from tests.methods.lowbit_helpers import layer_specs, paper_config


def _cifar(**quant):
    return paper_config("cifar10_ddim_qdm", **quant)


_specs = layer_specs


# --- layers ---------------------------------------------------------------------------------

def test_layer_recipe_and_flags():
    """W4A4 LSQ on every block conv/linear (1×1 skips and attention convs included), FP
    conv_in/conv_out, time MLP and temb_proj; TaQ on q and k of every attention block."""
    c = _cifar()
    assert (c.distill.loss, c.quant.taq, c.quant.act_step, c.distill.lr) == \
        ("nem", "batch_ema", "learned_lsq", 2e-4)
    specs = _specs(c)
    for p in ("down.0.block.0.conv1", "up.0.block.2.nin_shortcut", "mid.attn_1.q",
              "down.1.attn.0.proj_out", "up.1.upsample.conv", "down.2.downsample.conv"):
        assert (specs[p].binary, specs[p].weight, specs[p].act) == (True, "lsq4", "lsq4_sample")
    for p in ("conv_in", "conv_out", "temb.dense.0", "temb.dense.1", "up.1.block.2.temb_proj"):
        assert not specs[p].binary, p
    w3 = _specs(_cifar(bits_w=3, bits_a=3, weight_granularity="tensor", first_last_bits=8))
    assert (w3["mid.attn_1.v"].weight, w3["mid.attn_1.v"].act) == ("lsq3_tensor", "lsq3_sample")
    assert (w3["conv_in"].weight, w3["conv_in"].act) == ("lsq8", "lsq8_sample")
    with pytest.raises(ValueError, match="quant.taq='online' needs a method with LSQ act"):
        resolved(tiny_config(**{"quant.method": "bidm", "quant.taq": "online"}))
    with pytest.raises(ValueError, match="weight_granularity='tensor' needs a method with LSQ w"):
        resolved(tiny_config(**{"quant.method": "binarydm", "quant.weight_granularity": "tensor"}))


def test_bookkeeping_and_both_ops_accountings(tmp_path, capsys):
    """methods.md §4.6 item 1: 35,746,307 params, 6.0540 G conv+linear and 0.1679 G
    attention-matmul MACs per step; W4A4 with only conv_in/conv_out FP: 7.94× under b/32,
    3.99× under BOPs/64; Q-DM's default (time MLP and temb_proj FP too): 7.91×."""
    only_edges = _cifar(fp_layers=("conv_in", "conv_out"), binary_layers=("*",))
    _, s = summarize(build.quantized_model(only_edges, abstract=True), (32, 32, 3))
    fp = sibling(os.path.join(ROOT, "configs", "x.py"), "cifar10_ddim").get_config()
    fp.quant.method = "fp"
    fp = resolved(fp)
    _, f = summarize(build.quantized_model(fp, abstract=True), (32, 32, 3))
    assert f["params"]["teacher"] == 35_746_307
    np.testing.assert_allclose(s["macs"]["binary"] + s["macs"]["fp_layers"], 6.0540e9, rtol=1e-4)
    np.testing.assert_allclose(s["macs"]["unclaimed"], 0.1679e9, rtol=1e-3)
    assert round(s["paper"]["ops_bitwidth_saving"], 2) == 7.94
    assert round(s["paper"]["ops_saving"], 2) == 3.99
    info = run(_cifar(), str(tmp_path), "summary")
    assert round(info["paper"]["ops_bitwidth_saving"], 2) == 7.91
    out = capsys.readouterr().out
    assert "OPs = Σ MAC·b/32 + FLOPs" in out and "fits only the b/32 convention" in out


# --- LSQ variants ----------------------------------------------------------------------------

def test_lsq_sample_and_tensor_step_gradients():
    """``lsq4_sample``: the LSQ paper's step-gradient scale 1/√(features per sample·Q_P)
    (two copies of §4.6 item 2's x: Σ ∂x_q/∂s = −1.2, g = 1/√(5·7)), against ``lsq4``'s
    numel scale 1/√(10·7); ``lsq4_tensor``: one step per kernel, init 2·mean|W|/√7, scale
    1/√(W.size·7)."""
    x = jnp.array([[-2.5, -0.3, 0.0, 0.2, 1.9]] * 2)
    s = jnp.float32(0.25)
    for name, n in (("lsq4_sample", 5), ("lsq4", 10)):
        q = registry.get_quantizer(name, "activation")
        np.testing.assert_allclose(q(x, step=s)[0], [-2.0, -0.25, 0.0, 0.25, 1.75])
        g = jax.grad(lambda st: jnp.sum(q(x, step=st)))(s)
        np.testing.assert_allclose(g, -1.2 / np.sqrt(n * 7), rtol=1e-5)
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
    q = registry.get_quantizer("lsq4_tensor", "weight")
    step = q.variables[0].init(w, 36)
    assert step.shape == (1,)
    np.testing.assert_allclose(step[0], 2 * np.mean(np.abs(w)) / np.sqrt(7), rtol=1e-6)
    v = w / step
    inside = (v > -8) & (v < 7)
    dq_ds = np.where(inside, np.round(v) - v, np.where(v <= -8, -8.0, 7.0))
    g = jax.grad(lambda st: jnp.sum(q(w, step=st)))(step)
    np.testing.assert_allclose(g[0], dq_ds.sum() / np.sqrt(w.size * 7), rtol=1e-4)


# --- TaQ --------------------------------------------------------------------------------------

X3 = np.array([[0.5, -1.0], [1.5, 0.0], [-0.5, 2.0], [2.5, 1.0]], np.float32)


@pytest.mark.parametrize("variance,running_var", [("biased", 1.025), ("unbiased", 1.066667)])
def test_taq_then_lsq_unit_fact(variance, running_var):
    """methods.md §4.6 item 3: batch_ema TaQ (γ 1, β 0, ε 1e-5) then LSQ 4-bit s = 0.5 on
    four samples of two channels, and the running statistics after one step (momentum 0.1)."""
    taq = TaQ(2, TaQSpec(variance=variance))
    x = jnp.asarray(X3)[:, None, :]          # (B=4, N=1, C=2)
    with aux_mode("train"):
        y = taq(x)
    np.testing.assert_allclose(y[:, 0, 0], [-0.447212, 0.447212, -1.341635, 1.341635],
                               atol=1e-5)
    out = registry.get_quantizer("lsq4", "activation")(y, step=jnp.float32(0.5))[:, 0]
    np.testing.assert_allclose(out, [[-0.5, -1.5], [0.5, -0.5], [-1.5, 1.5], [1.5, 0.5]])
    np.testing.assert_allclose(taq.running_mean[...], [[0.1, 0.05]], rtol=1e-6)
    np.testing.assert_allclose(taq.running_var[...], [[running_var] * 2], rtol=1e-6)
    # Outside training TaQ reads the running statistics, whatever the batch.
    np.testing.assert_allclose(taq(x), (x - 0.1 * jnp.array([1.0, 0.5])) /
                               jnp.sqrt(running_var + 1e-5), rtol=1e-5)


def test_taq_per_t_bucket_updates_only_its_buckets():
    """Each sample is normalised with its bucket's batch moments; only the buckets in the
    batch advance; sampling reads the bucket of each sample's t."""
    taq = TaQ(2, TaQSpec(mode="per_t_bucket", buckets=4, num_timesteps=100))
    x = jnp.asarray(X3)[:, None, :]
    t = jnp.array([10, 10, 80, 80])          # buckets 0, 0, 3, 3
    with aux_mode("train"), timestep_context(t):
        y = taq(x)
    for rows in ((0, 1), (2, 3)):
        xs = X3[list(rows)]
        want = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
        np.testing.assert_allclose(y[list(rows), 0], want, atol=1e-5)
    rm = np.asarray(taq.running_mean[...])
    np.testing.assert_allclose(rm[0], 0.1 * X3[:2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(rm[3], 0.1 * X3[2:].mean(0), rtol=1e-6)
    assert not rm[1].any() and not rm[2].any()
    with timestep_context(jnp.array([80, 10, 50, 30])):
        z = taq(x)
    rv = np.asarray(taq.running_var[...])
    for i, b in enumerate((3, 0, 2, 1)):
        np.testing.assert_allclose(z[i, 0], (X3[i] - rm[b]) / np.sqrt(rv[b] + 1e-5), rtol=1e-5)


def _student(taq):
    c = resolved(tiny_config(**{"quant.method": "qdm", "quant.taq": taq,
                                "quant.taq_affine_init": "calibrated"}))
    return c, build.student(c, build.fp_model(c).params)


@pytest.mark.parametrize("taq", ["batch_ema", "online"])
def test_sampling_does_not_depend_on_the_batch(taq):
    """A sample's ε̂ is the same whichever samples share its batch (running statistics for
    batch_ema, per-sample ones for online); in training batch_ema uses the batch's moments,
    so there the companions do change it. 'calibrated' affine init: TaQ starts as the
    identity on the calibration batch."""
    c, s = _student(taq)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 8, 8, 3)), jnp.float32)
    t = jnp.array([900, 20, 500, 700, 300])

    def calibrate(values):
        module = s.fm.module(values)
        with aux_mode("calibrate"):
            module(x, t, None)
        return {**s.fm.params_of(module), **s.fm.aux_of(module)}

    values = jax.jit(calibrate)({**s.fm.params, **s.fm.aux})
    if taq == "batch_ema":
        assert np.any(np.asarray(values["mid.attn_1.operands.taq_q.running_var"]) != 1.0)
    gamma = np.asarray(values["mid.attn_1.operands.taq_q.gamma"])
    assert (taq == "batch_ema") == (not np.allclose(gamma, 1.0))

    def eps(v, xs, ts, mode=None):
        with aux_mode(mode):
            return s.fm.module(v)(xs, ts, None)[0]

    f = jax.jit(eps, static_argnums=3)
    a = f(values, x[:3], t[:3])
    b = f(values, x[jnp.array([0, 3, 4])], t[jnp.array([0, 3, 4])])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    if taq == "batch_ema":
        ta = f(values, x[:3], t[:3], "train")
        tb = f(values, x[jnp.array([0, 3, 4])], t[jnp.array([0, 3, 4])], "train")
        assert not np.allclose(ta[0], tb[0], atol=1e-4)


# --- NeM -------------------------------------------------------------------------------------

def _abar():
    return schedules.alphas_cumprod(schedules.make_betas("linear", 1e-4, 2e-2, 1000))


def test_nem_targets_against_the_formulas():
    """x0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ; mean = (√ᾱ_{t−1}β_t x̂0 + √α_t(1−ᾱ_{t−1})x_t)/(1−ᾱ_t), with
    ᾱ_{−1} = 1 (at t = 0 the mean is x̂0)."""
    abar = _abar()
    rng = np.random.default_rng(1)
    eps, x = (rng.normal(size=(3, 2, 2, 1)).astype(np.float32) for _ in range(2))
    t = np.array([0, 400, 999])
    a = abar[t][:, None, None, None]
    x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
    prev = np.where(t > 0, abar[np.maximum(t - 1, 0)], 1.0)[:, None, None, None]
    beta = 1 - a / prev
    mean = (np.sqrt(prev) * beta * x0 + np.sqrt(1 - beta) * (1 - prev) * x) / (1 - a)
    got = {k: np.asarray(nem.target_of(jnp.asarray(eps), jnp.asarray(x), jnp.asarray(t), abar, k))
           for k in nem.TARGETS}
    np.testing.assert_allclose(got["eps"], eps)
    np.testing.assert_allclose(got["x0"], x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["mean"][0], x0[0], rtol=1e-4, atol=1e-5)


def test_nem_gradient_and_unrolled_form():
    """∂/∂ε̂_Q of λ·mean‖ε̂_FP − ε̂_Q‖² is 2λ(ε̂_Q − ε̂_FP)/n per element and nothing reaches
    the teacher; K = 1 unrolled equals one DDIM step from each model's ε̂; K = 3 runs the
    student twice more and matches the states; samples past t = 0 stop at x̂0."""
    abar = _abar()
    rng = np.random.default_rng(2)
    eq, ef, e, x = (jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32) for _ in range(4))
    t = jnp.array([15, 600])
    g = jax.grad(lambda q: nem.nem_term(q, ef, x, t, abar, reduction="mean"))(eq)
    np.testing.assert_allclose(g, 2 * (eq - ef) / (4 * 4 * 3) / 2, rtol=1e-5, atol=1e-7)
    assert not np.any(jax.grad(lambda f: nem.nem_term(eq, f, x, t, abar))(ef))

    class D(dict):
        __getattr__ = dict.__getitem__

    calls = []
    student = lambda xs, ts: (calls.append(np.asarray(ts)), 0.5 * xs)[1]
    teacher = lambda xs, ts: 0.4 * xs
    dist = D(nem_unroll=1, nem_stride=10, nem_target="eps", nem_lambda=2.0, keep_simple=False)
    loss, parts = nem.objective(eq, ef, e, x, t, abar, dist, student, teacher)
    xq, _ = nem.ddim_step(x, eq, t, 10, abar)
    xf, _ = nem.ddim_step(x, ef, t, 10, abar)
    np.testing.assert_allclose(parts["distill"], np.mean((xq - xf) ** 2), rtol=1e-5)
    np.testing.assert_allclose(loss, 2.0 * parts["distill"], rtol=1e-6)
    assert not calls
    dist.update(nem_unroll=3)
    nem.objective(eq, ef, e, x, t, abar, dist, student, teacher)
    np.testing.assert_array_equal(np.stack(calls), [[5, 590], [0, 580]])
    # t = 15, stride 10: 15 -> 5 -> x̂0 (t = −5), then it stays.
    x1, t1 = nem.ddim_step(x, eq, t, 10, abar)
    x2, t2 = nem.ddim_step(x1, eq, t1, 10, abar)
    x3, t3 = nem.ddim_step(x2, eq, t2, 10, abar)
    assert list(np.asarray(t3)) == [-5, 570]
    np.testing.assert_array_equal(x3[0], x2[0])
