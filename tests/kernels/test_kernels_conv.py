"""Binary conv from packed weights against the lax.conv reference (methods.md §2.3–2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.kernels.conv import binary_conv2d, binary_conv2d_reference, pack_conv_weights


def _layer(seed, cin, cout, b=2, hw=4):
    ks = jax.random.split(jax.random.key(seed), 7)
    p = dict(
        tau=0.1 * jax.random.normal(ks[1], (cin,)),
        k_kernel=jnp.full((3, 3, 1, 1), 1 / 9) + 0.05 * jax.random.normal(ks[2], (3, 3, 1, 1)),
        k_bias=0.2,
        shortcut_scale=0.3,
    )
    if cin != cout:
        p["shortcut_kernel"] = 0.1 * jax.random.normal(ks[3], (1, 1, cin, cout))
        p["shortcut_bias"] = 0.1 * jax.random.normal(ks[4], (cout,))
    x = jax.random.normal(ks[5], (b, hw, hw, cin))
    w = 0.05 * jax.random.normal(ks[6], (3, 3, cin, cout))
    return x, w, p


CASES = [
    # (cin, cout, stride, padding, path, backend)
    (8, 8, 1, 1, "mxu", "tpu"),
    (8, 16, 2, 1, "mxu", "gpu"),
    (8, 8, 2, ((0, 1), (0, 1)), "popcount", "tpu"),  # DDIM Downsample padding
    (8, 16, 1, 1, "popcount", "gpu"),
]


@pytest.mark.parametrize("cin,cout,stride,padding,path,backend", CASES)
def test_binary_conv_matches_reference(cin, cout, stride, padding, path, backend):
    x, w, p = _layer(cin * 100 + cout + stride, cin, cout)
    packed = pack_conv_weights(w, backend=backend)
    run = jax.jit(lambda x, packed, p: binary_conv2d(
        x, packed, stride=stride, padding=padding, path=path, backend=backend, interpret=True, **p))
    got = run(x, packed, p)
    want = binary_conv2d_reference(x, w, stride=stride, padding=padding, **p)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_padding_contributes_zero():
    # x = 1, W = +1, α = 1, k = box filter, no bias: the corner output sees 4 of 9 taps,
    # so y = (4·C)·(4/9); a ±1 padding would give 9·C or (4−5)·C instead.
    c = 4
    x = jnp.ones((1, 4, 4, c))
    w = jnp.ones((3, 3, c, c))
    args = dict(tau=jnp.zeros((c,)), k_kernel=jnp.full((3, 3, 1, 1), 1 / 9), padding=1)
    want = binary_conv2d_reference(x, w, **args)
    np.testing.assert_allclose(want[0, 0, 0], np.full(c, 4 * c * 4 / 9), rtol=1e-6)
    np.testing.assert_allclose(want[0, 1, 1], np.full(c, 9 * c), rtol=1e-6)
    for path in ["mxu", "popcount"]:
        got = binary_conv2d(x, pack_conv_weights(w, group_words=1), path=path, backend="reference", **args)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_exact_zero_activation_in_mxu_path():
    # sign(0) = 0 as torch.sign: the int8 path keeps it, matching the reference exactly.
    x, w, p = _layer(7, 4, 4, b=1, hw=4)
    p["tau"] = jnp.zeros((4,))
    x = x.at[0, 1, 2, :].set(0.0)
    got = binary_conv2d(x, pack_conv_weights(w, group_words=1), path="mxu", backend="reference", **p)
    np.testing.assert_allclose(got, binary_conv2d_reference(x, w, **p), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    x, w, p = _layer(1, 4, 8)
    packed = pack_conv_weights(w, group_words=1)
    with pytest.raises(ValueError, match="path"):
        binary_conv2d(x, packed, path="fast", **p)
    p.pop("shortcut_kernel")
    with pytest.raises(ValueError, match="shortcut_kernel"):
        binary_conv2d(x, packed, backend="reference", **p)
    with pytest.raises(ValueError, match=r"\(kh, kw, I, O\)"):
        pack_conv_weights(jnp.ones((3, 3, 4)))
