"""Models: the DDIM pixel UNet (more backbones plug in through ``build_unet``)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.ddim_unet import DDIMUNet
from bidm_jax.models.layers import FPFactory

ARCHITECTURES = ("ddim_unet",)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_unet(model_config, *, rngs: nnx.Rngs, factory=None) -> nnx.Module:
    """Builds the UNet named by ``model_config.name`` through a layer factory.

    Args:
      model_config: the ``model`` config section (ch, ch_mult, num_res_blocks,
        attn_resolutions, dropout, in_channels, out_ch, resolution, dtype).
      rngs: parameter init keys, e.g. ``nnx.Rngs(seed)``.
      factory: layer factory (``bidm_jax.models.layers``); None = full precision.
    """
    if model_config.name not in ARCHITECTURES:
        raise ValueError(f"model.name must be one of {ARCHITECTURES}, got {model_config.name!r}")
    if model_config.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {model_config.dtype!r}")
    dtype = DTYPES[model_config.dtype]
    return DDIMUNet(ch=model_config.ch, ch_mult=tuple(model_config.ch_mult),
                    num_res_blocks=model_config.num_res_blocks,
                    attn_resolutions=tuple(model_config.attn_resolutions),
                    dropout=model_config.dropout, in_channels=model_config.in_channels,
                    out_ch=model_config.out_ch, resolution=model_config.resolution,
                    resamp_with_conv=model_config.resamp_with_conv,
                    factory=factory if factory is not None else FPFactory(dtype),
                    dtype=dtype, rngs=rngs)


def count_params(module: nnx.Module) -> int:
    """Number of scalar parameters (nnx.Param leaves)."""
    import jax
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


__all__ = ["build_unet", "count_params", "DDIMUNet", "FPFactory", "ARCHITECTURES"]
