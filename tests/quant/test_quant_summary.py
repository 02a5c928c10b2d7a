"""Efficiency summary on the toy network: MACs, bits, sizes, BOPs/FLOPs/OPs by hand."""

import pytest
from flax import nnx

from bidm_jax.quant import QuantFactory, fp_factory, summarize
from bidm_jax.models.ddim_family import DDIM_UNET
from tests.conftest import quant_config

SKIP = DDIM_UNET.skip_patterns


# Toy at 8x8 (see conftest): per image MACs of each layer.
CONV_IN = 8 * 8 * 9 * 3 * 8          # 13,824 (FP)
CONV1 = 8 * 8 * 9 * 8 * 16           # 73,728 (binary)
NIN = 8 * 8 * 8 * 16                 # 8,192 (FP skip)
TEMB = 4 * 16                        # 64 (binary dense)
DOWN = 4 * 4 * 9 * 16 * 16           # 36,864 (binary)
Q = 4 * 4 * 16 * 16                  # 4,096 (binary)


def test_fp_summary_counts(toy_cls):
    model = toy_cls(fp_factory(), nnx.Rngs(0))
    table, s = summarize(model, (8, 8, 3))
    total = CONV_IN + CONV1 + NIN + TEMB + DOWN + Q
    assert s["macs"]["fp_layers"] == total
    assert s["macs"]["binary"] == 0 and s["paper"]["bops"] == 0
    assert s["paper"]["flops"] == total == s["paper"]["fp32_flops"]
    assert s["macs"]["unclaimed"] == 0
    n = sum(v[...].size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert s["params"]["teacher"] == n and s["params"]["by_bits"] == {"1": 0, "32": n}
    assert s["paper"]["fp32_size_mib"] == pytest.approx(n * 4 / 2 ** 20)
    assert "conv_in" in table and "OPs" in table


def test_bidm_summary_counts(toy_cls):
    model = toy_cls(QuantFactory(quant_config()), nnx.Rngs(0))
    _, s = summarize(model, (1, 8, 8, 3), skip_patterns=SKIP)
    binary = CONV1 + TEMB + DOWN + Q
    assert s["macs"]["binary"] == binary
    assert s["paper"]["bops"] == binary  # b_w = b_a = 1
    assert s["macs"]["skip"] == NIN
    # FP 1x1 shortcut of conv1 (8 -> 16); k-conv maps of the three binary convs
    assert s["macs"]["shortcut"] == 8 * 8 * 8 * 16
    assert s["macs"]["kconv"] == 8 * 8 * 9 + 4 * 4 * 9 + 4 * 4 * 1
    assert s["paper"]["flops"] == CONV_IN  # skip convs excluded, per the papers
    assert s["paper"]["ops"] == pytest.approx(binary / 64 + CONV_IN)
    stored_flops = CONV_IN + NIN + s["macs"]["shortcut"] + s["macs"]["kconv"]
    assert s["stored"]["flops"] == stored_flops
    # bits: binary kernels at 1 bit; the paper size counts teacher tensors only
    k_bin = 9 * 8 * 16 + 4 * 16 + 9 * 16 * 16 + 16 * 16
    assert s["params"]["by_bits"]["1"] == k_bin
    teacher = s["params"]["teacher"]
    assert s["paper"]["size_mib"] == pytest.approx((k_bin + 32 * (teacher - k_bin)) / 8 / 2 ** 20)
    scales = 16 * 4  # detached per-output-channel alphas stored for inference
    assert s["paper"]["size_with_scales_mib"] == pytest.approx(
        (k_bin + 32 * (teacher - k_bin + scales)) / 8 / 2 ** 20)
    assert s["stored"]["size_mib"] > s["paper"]["size_mib"]  # extras counted honestly


def test_attention_matmuls_are_counted_as_unclaimed(toy_cls):
    import jax.numpy as jnp

    class WithAttn(toy_cls):
        def __call__(self, x, t):
            h = super().__call__(x, t)  # (B, 4, 4, 16)
            q = h.reshape(h.shape[0], 16, 16)
            w = jnp.einsum("bqc,bkc->bqk", q, q)
            return jnp.einsum("bqk,bkc->bqc", w, q)

    _, s = summarize(WithAttn(fp_factory(), nnx.Rngs(0)), (8, 8, 3))
    assert s["macs"]["unclaimed"] == 2 * 16 * 16 * 16
    assert s["stored"]["flops"] == s["paper"]["flops"] + 2 * 16 * 16 * 16


def test_summary_rejects_models_without_factory_layers():
    class Plain(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

        def __call__(self, x, t):
            return self.lin(x)

    with pytest.raises(ValueError, match="QuantFactory"):
        summarize(Plain(), (2, 2, 3))
    with pytest.raises(ValueError, match="input_shape"):
        summarize(Plain(), (2, 2, 2, 3))
