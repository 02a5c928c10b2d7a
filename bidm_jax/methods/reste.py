"""``reste``: ReSTE (methods.md §5): sign with the power-rule estimator on weights (per-layer
mean|W| scale, differentiable) and activations. Its power o rises from 1 to
``quant.reste_o_end`` with a cosine schedule over ``train.num_steps``: o is auxiliary state
(``*.reste_o``) that :meth:`ReSTE.step_aux` sets before every training step."""
import dataclasses

import jax.numpy as jnp

from bidm_jax.methods.base import Method, register_method
from bidm_jax.quant.ste import reste_o_schedule

AUX_LEAF = "reste_o"  # the layers' attribute (bidm_jax.quant.registry)


@dataclasses.dataclass(frozen=True)
class ReSTE(Method):
    def step_aux(self, aux: dict, step, config) -> dict:
        progress = step / max(int(config.train.num_steps), 1)
        o = jnp.asarray(reste_o_schedule(progress, config.quant.reste_o_end), jnp.float32)
        return {n: (jnp.broadcast_to(o, jnp.shape(v)) if n.rsplit(".", 1)[-1] == AUX_LEAF
                    else v) for n, v in aux.items()}


RESTE = register_method(ReSTE(name="reste", weight="reste", act="reste", step_ms=31.0,
                              description="ReSTE W1A1: power-rule estimator"))
