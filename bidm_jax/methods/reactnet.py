"""``reactnet``: ReActNet (methods.md §5): RSign inputs, per-channel mean|W| weights, an
identity shortcut around every binary conv and RPReLU after the residual add."""
from bidm_jax.methods.base import Method, register_method

REACTNET = register_method(Method(
    name="reactnet", weight="channel_detached", act="rsign", channel_shift=True,
    shortcut="unit", rprelu="post_residual", step_ms=33.0,
    description="ReActNet W1A1: RSign, unit shortcut, RPReLU after the residual"))
