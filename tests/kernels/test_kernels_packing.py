"""Bit packing: layout, sign convention, padding, round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.kernels.packing import num_words, pack_signs, padded_length, unpack_signs


def test_known_words():
    # bits LSB first, bit 1 = negative; 0 packs as +1 (bit 0).
    x = jnp.array([-1.0, 2.0, -0.5, 0.0] + [1.0] * 27 + [-3.0])
    w = pack_signs(x)
    assert w.dtype == jnp.int32 and w.shape == (1,)
    assert int(w[0]) == np.int32(np.uint32(0b101 | (1 << 31)).view(np.int32))
    assert int(pack_signs(jnp.zeros(5))[0]) == 0


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("g", [1, 3])
def test_round_trip_and_padding(k, g):
    x = jax.random.normal(jax.random.key(k * 7 + g), (3, k, 5))
    w = pack_signs(x, axis=1, group_words=g)
    assert w.shape == (3, num_words(k, g), 5)
    assert padded_length(k, g) % (32 * g) == 0
    back = unpack_signs(w, k, axis=1, group_words=g)
    np.testing.assert_array_equal(back, np.where(np.asarray(x) < 0, -1, 1))
    # padding bits are 0 (+1): packing the zero-extended array gives the same words.
    xp = jnp.pad(x, ((0, 0), (0, padded_length(k, g) - k), (0, 0)))
    np.testing.assert_array_equal(pack_signs(xp, axis=1, group_words=g), w)


def test_grouped_layout_positions():
    g, k = 2, 128
    for pos in [0, 1, 2, 37, 64 + 2 * 5 + 1, 127]:
        x = jnp.ones((k,)).at[pos].set(-1.0)
        w = np.asarray(pack_signs(x, group_words=g)).view(np.uint32)
        q, r = divmod(pos, 32 * g)
        j, wi = divmod(r, g)
        expect = np.zeros(k // 32, np.uint32)
        expect[q * g + wi] = np.uint32(1) << np.uint32(j)
        np.testing.assert_array_equal(w, expect)


def test_bad_inputs():
    with pytest.raises(ValueError, match="words"):
        unpack_signs(jnp.zeros((3,), jnp.int32), 100)
    with pytest.raises(ValueError, match="int32"):
        unpack_signs(jnp.zeros((1,), jnp.uint32), 10)
    with pytest.raises(ValueError):
        padded_length(0)
