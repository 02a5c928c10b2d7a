"""BiDM's cross-timestep connection (methods.md §2.5, §8 items 7 and 14), the DDIM family's
TBS wiring and SPD taps, and the config resolution (faithful_to, per-method defaults)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax.configlib import resolve_config
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.models import build_unet
from bidm_jax.models.ddim_family import DDIM_UNET, spd_features, up_block_outputs
from tests.conftest import ROOT, tiny_config


def resolve_distill_config(c):
    return resolve_config(c, "distill")


def _topology(model, kind, n=2):
    return tbs_lib.make_topology(DDIM_UNET, model, kind, n)


def _cifar_model():
    from bidm_jax.configlib import sibling
    cfg = sibling(os.path.join(ROOT, "configs", "default.py"), "default").get_config()
    return nnx.eval_shape(lambda: build_unet(cfg.model, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny_model():
    return build_unet(tiny_config().model, rngs=nnx.Rngs(0))


def test_coefficient_rows_are_floor_t_over_10():
    t = jnp.array([0, 9, 10, 19, 500, 990, 999])
    np.testing.assert_array_equal(tbs_lib.coefficient_rows(t, 100), [0, 0, 1, 1, 50, 99, 99])
    assert tbs_lib.num_rows(1000) == 100


def test_mix_formula_stopgrad_and_invalid_step():
    k1, k2 = jax.random.split(jax.random.key(0))
    h = jax.random.normal(k1, (2, 3, 3, 4))
    prev = jax.random.normal(k2, (2, 3, 3, 4))
    c = jnp.array([0.25, 0.7])
    out = tbs_lib.mix(h, prev, c, True)
    np.testing.assert_allclose(out, (1 - c[:, None, None, None]) * h
                               + c[:, None, None, None] * prev, rtol=1e-6)
    # d/dc sum(out) = sum(prev - h) per sample; no gradient reaches the cached feature.
    gc, gp = jax.grad(lambda c, p: tbs_lib.mix(h, p, c, True).sum(), argnums=(0, 1))(c, prev)
    np.testing.assert_allclose(gc, (prev - h).sum(axis=(1, 2, 3)), rtol=1e-5)
    assert not np.any(gp)
    # First sampling step (valid=False): identity, and the coefficient gets no gradient.
    np.testing.assert_array_equal(tbs_lib.mix(h, prev, c, False), h)
    assert not np.any(jax.grad(lambda c: tbs_lib.mix(h, prev, c, False).sum())(c))
    with pytest.raises(ValueError, match="equal shape"):
        tbs_lib.mix(h, prev[:, :2], c, True)


def test_mixer_reads_previous_call_and_records_mixed_features():
    """Code wiring: up.1.attn.* read the *cached* level input although the current call has
    already produced a new one; recorded features are the post-mixing ones."""
    topo = tbs_lib.Topology("code", (("a", "src", 0), ("src2", "src2", 0)), 1)
    table = jnp.full((100, 1), 0.5)
    old_src, old_src2 = jnp.full((1, 1, 1, 1), 10.0), jnp.full((1, 1, 1, 1), 4.0)
    carry = {"valid": jnp.array(True), "feats": {"src": old_src, "src2": old_src2}}
    mixer = tbs_lib.Mixer(topo, table)
    t = jnp.array([37])
    new_src, _ = mixer("src", jnp.full((1, 1, 1, 1), 2.0), carry, t)
    a, _ = mixer("a", jnp.zeros((1, 1, 1, 1)), carry, t)
    s2, _ = mixer("src2", jnp.zeros((1, 1, 1, 1)), carry, t)
    assert float(new_src[0, 0, 0, 0]) == 2.0       # a source that is not a mixing point
    assert float(a[0, 0, 0, 0]) == 5.0             # 0.5·0 + 0.5·cached 10, not the new 2
    assert float(s2[0, 0, 0, 0]) == 2.0            # mixes with its own previous output
    assert set(mixer.recorded) == {"src", "src2"}
    assert float(mixer.recorded["src2"][0, 0, 0, 0]) == 2.0  # recorded after mixing


@pytest.mark.parametrize("faithful, init", [("paper", 0.3), ("code", 0.0)])
def test_table_init_per_flag(tiny_model, faithful, init):
    c = tiny_config()
    c.quant.method = "bidm"
    c.distill.faithful_to = faithful
    r = resolve_distill_config(c)
    topo = _topology(tiny_model, r.distill.tbs_topology)
    model = build_unet(c.model, rngs=nnx.Rngs(0))
    tbs_lib.attach_tbs(model, topo, r.distill.tbs_init, r.diffusion.num_timesteps)
    table = model.tbs.coefficients[...]
    assert table.shape == (100, 1)
    np.testing.assert_array_equal(table, np.full((100, 1), init, np.float32))
    assert isinstance(model.tbs.coefficients, nnx.Param)  # trained and checkpointed


def _one_level_model():
    """A 1-level UNet (cheap to trace): the paper topology's up.0 blocks exist here too."""
    cfg = tiny_config(**{"model.ch_mult": (1,), "model.attn_resolutions": ()})
    return build_unet(cfg.model, rngs=nnx.Rngs(0))


def test_mixing_uses_row_of_each_sample():
    """Paper topology, last block only: the mixed output equals (1−c)h + c·prev with
    c = table[⌊t/10⌋] per sample, h the unmixed forward's feature."""
    model = _one_level_model()
    topo = _topology(model, "paper", 1)
    assert topo.mix == (("up.0.block.1", "up.0.block.1", 0),)
    tbs_lib.attach_tbs(model, topo, 0.0)
    model.tbs.coefficients[...] = jnp.arange(100, dtype=jnp.float32)[:, None] / 200.0
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    t = jnp.array([5, 123, 999])
    prev = jax.random.normal(jax.random.key(2), (3, 8, 8, 32))

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        plain, mixed = {}, {}
        tbs_lib.tbs_apply(m, topo, x, t, None, features=plain)
        cache = {"valid": jnp.array(True), "feats": {"up.0.block.1": prev}}
        _, carry = tbs_lib.tbs_apply(m, topo, x, t, cache, features=mixed)
        return plain["up.0.block.1"], mixed["up.0.block.1"], carry

    h, mixed, carry = run(state)
    c = (jnp.array([0, 12, 99]) / 200.0)[:, None, None, None]
    expect = (1 - c) * h + c * prev
    np.testing.assert_allclose(mixed, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry["feats"]["up.0.block.1"], expect, rtol=1e-5, atol=1e-6)
    assert bool(carry["valid"])


def test_first_sampling_step_does_not_mix():
    model = _one_level_model()
    topo = _topology(model, "paper", 2)
    tbs_lib.attach_tbs(model, topo, 0.9)
    shapes = tbs_lib.feature_shapes(model, topo, (8, 8, 3))
    graphdef, state = nnx.split(model)
    x, t = jax.random.normal(jax.random.key(3), (2, 8, 8, 3)), jnp.array([990, 990])

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        first = tbs_lib.init_carry(shapes, 2)
        plain, _ = m(x, t)
        eps1, carry = tbs_lib.tbs_apply(m, topo, x, t, first)
        # The next step (another x_t) mixes with this step's features.
        plain2, _ = m(0.5 * x, t - 10)
        eps2, _ = tbs_lib.tbs_apply(m, topo, 0.5 * x, t - 10, carry)
        return first["valid"], plain, eps1, plain2, eps2

    valid, plain, eps1, plain2, eps2 = run(state)
    assert not bool(valid)
    np.testing.assert_array_equal(eps1, plain)
    assert not np.allclose(eps2, plain2, atol=1e-4)


def test_carry_shapes_tiny_and_cifar(tiny_model):
    topo = _topology(tiny_model, "code")
    # Tiny UNet (2 levels, 1 res block, attention at 4x4): up.1 has 2 attention outputs that
    # mix with the previous mid.block_2 output (64@4x4); up.1.upsample with itself (64@8x8).
    assert topo.mix == (("up.1.attn.0", "mid.block_2", 0), ("up.1.attn.1", "mid.block_2", 0),
                        ("up.1.upsample", "up.1.upsample", 0))
    shapes = tbs_lib.feature_shapes(tiny_model, topo, (8, 8, 3))
    assert {k: v.shape for k, v in shapes.items()} == {"mid.block_2": (4, 4, 64),
                                                       "up.1.upsample": (8, 8, 64)}
    cifar = _cifar_model()
    code = _topology(cifar, "code")
    # methods.md §2.5 CIFAR: 3 attention outputs of up.1 mix with the previous up.2.upsample
    # (256x16x16), up.1.upsample with its own (256x32x32); one column.
    assert code.mix == tuple((f"up.1.attn.{j}", "up.2.upsample", 0) for j in range(3)) + (
        ("up.1.upsample", "up.1.upsample", 0),)
    assert code.n_columns == 1
    s = tbs_lib.feature_shapes(cifar, code, (32, 32, 3))
    assert {k: v.shape for k, v in s.items()} == {"up.2.upsample": (16, 16, 256),
                                                  "up.1.upsample": (32, 32, 256)}
    assert tbs_lib.carry_floats(s) == 327_680
    paper = _topology(cifar, "paper", 2)
    assert paper.mix == (("up.0.block.1", "up.0.block.1", 0), ("up.0.block.2", "up.0.block.2", 1))
    assert len(up_block_outputs(cifar)) == 12  # LDM-style output blocks
    with pytest.raises(ValueError, match="tbs_last_n"):
        _topology(cifar, "paper", 13)
    with pytest.raises(ValueError, match="valid choices"):
        _topology(cifar, "everything")


def test_spd_features_follow_the_code_hooks(tiny_model):
    cifar = _cifar_model()
    assert spd_features(cifar) == [
        "down.0.downsample", "down.1.downsample", "down.2.downsample", "down.3.block.1.conv2",
        "mid.block_2.conv2", "up.3.upsample", "up.2.upsample", "up.1.upsample"]
    assert spd_features(tiny_model) == ["down.0.downsample", "down.1.block.0.conv2",
                                             "mid.block_2.conv2", "up.1.upsample"]
    graphdef, state = nnx.split(tiny_model)

    def run(state):
        feats = {}
        nnx.merge(graphdef, state)(jnp.zeros((1, 8, 8, 3)), jnp.array([3]), features=feats)
        return feats

    feats = jax.eval_shape(run, state)
    assert feats["down.1.block.0.conv2"].shape == (1, 4, 4, 64)
    assert feats["mid.block_2.conv2"].shape == (1, 4, 4, 64)


def test_faithful_to_switch_and_method_defaults():
    c = tiny_config()
    c.quant.method = "bidm"
    r = resolve_distill_config(c)
    assert (r.train.lr, r.distill.spd_lambda, r.distill.tbs_init) == (6e-5, 3e-2, 0.3)
    assert r.distill.tbs is True and r.distill.loss == "spd"
    c.distill.faithful_to = "code"
    r = resolve_distill_config(c)
    assert (r.train.lr, r.distill.spd_lambda, r.distill.tbs_init) == (1e-4, 1e-2, 0.0)
    assert c.distill.lr is None and c.train.lr == 1e-3  # the input config is not modified
    c.distill.spd_lambda = 0.5  # an explicit value wins over the table
    c.distill.num_steps = 7
    r = resolve_distill_config(c)
    assert r.distill.spd_lambda == 0.5 and r.train.num_steps == 7
    c.quant.method = "xnor"
    r = resolve_distill_config(c)
    assert r.distill.tbs is False and r.distill.loss == "none"
    c.distill.tbs, c.distill.loss = True, "spd"   # XNOR + TBS + SPD ablation
    r = resolve_distill_config(c)
    assert r.distill.tbs is True and r.distill.loss == "spd"
    c.distill.faithful_to = "both"
    with pytest.raises(ValueError, match="faithful_to.*paper, code"):
        resolve_distill_config(c)


def test_cifar_configs():
    from bidm_jax.configlib import sibling, validate_config
    c = sibling(os.path.join(ROOT, "configs", "default.py"), "cifar10_ddim").get_config()
    validate_config(c)
    r = resolve_distill_config(c)
    assert (r.train.batch_size, r.train.num_steps, r.train.grad_clip, r.train.ema_decay) == (
        64, 100_000, 1.0, 0.9999)
    assert (r.train.lr, r.distill.spd_lambda, r.distill.tbs_init) == (6e-5, 3e-2, 0.3)
    assert (r.diffusion.sampler, r.diffusion.sample_steps, r.diffusion.eta) == ("ddim", 100, 0.0)
    assert r.quant.method == "bidm" and r.distill.tbs and r.distill.loss == "spd"
    expect = {"xnor": ("xnor", False, "none"), "xnorpp": ("xnor++", False, "none"),
              "dorefa": ("dorefa", False, "none"), "reactnet": ("reactnet", False, "none"),
              "reste": ("reste", False, "none"), "bbcu": ("bbcu", False, "none"),
              "xnor_tbs": ("xnor", True, "none"), "xnor_spd": ("xnor", False, "spd")}
    for suffix, (method, tbs, loss) in expect.items():
        cfg = sibling(os.path.join(ROOT, "configs", "default.py"),
                      f"cifar10_ddim_{suffix}").get_config()
        validate_config(cfg)
        r = resolve_distill_config(cfg)
        assert (r.quant.method, r.distill.tbs, r.distill.loss) == (method, tbs, loss), suffix
        assert r.train.lr == 6e-5
