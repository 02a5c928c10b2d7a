"""A tiny two-level toy network built only through the layer factory (no UNet needed)."""

import jax.numpy as jnp
import pytest
from flax import nnx


class ToyNet(nnx.Module):
    """conv_in (FP) -> conv1 (binary, 8->16) + temb_proj (binary dense) -> pad (0,1,0,1) ->
    downsample conv (binary, stride 2, VALID) -> q (binary 1x1) -> + nin_shortcut path (FP)."""

    def __init__(self, factory, rngs):
        self.conv_in = factory.conv("conv_in", 3, 8, 3, padding=1, rngs=rngs)
        self.conv1 = factory.conv("down.0.block.0.conv1", 8, 16, 3, padding=1, rngs=rngs)
        self.temb_proj = factory.dense("down.0.block.0.temb_proj", 4, 16, rngs=rngs)
        self.nin_shortcut = factory.conv("down.0.block.0.nin_shortcut", 8, 16, 1, rngs=rngs)
        self.down = factory.conv("down.0.downsample.conv", 16, 16, 3, stride=2, padding=0,
                                 rngs=rngs)
        self.q = factory.conv("mid.attn_1.q", 16, 16, 1, rngs=rngs)
        self.norm = nnx.GroupNorm(16, num_groups=4, rngs=rngs)

    def __call__(self, x, t):
        tf = t.astype(jnp.float32)[:, None] * jnp.asarray([0.1, 0.2, 0.3, 0.4])
        temb = jnp.concatenate([jnp.sin(tf[:, :2]), jnp.cos(tf[:, 2:])], axis=-1)
        h = self.conv_in(x)
        h = self.conv1(h) + self.nin_shortcut(h) + self.temb_proj(temb)[:, None, None, :]
        h = jnp.pad(self.norm(h), ((0, 0), (0, 1), (0, 1), (0, 0)))
        h = self.down(h)
        return self.q(h)


@pytest.fixture
def toy_cls():
    return ToyNet
