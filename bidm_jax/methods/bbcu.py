"""``bbcu``: BBCU (methods.md §5): ReActNet's binary conv with RPReLU *before* the residual
add (the BBCU unit)."""
from bidm_jax.methods.base import Method, register_method

BBCU = register_method(Method(
    name="bbcu", weight="channel_detached", act="rsign", channel_shift=True,
    shortcut="unit", rprelu="pre_residual", step_ms=33.0,
    description="BBCU W1A1: RSign, unit shortcut, RPReLU before the residual"))
