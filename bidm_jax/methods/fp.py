"""``fp``: every layer full precision (the teacher, or an FP student for comparison)."""
from bidm_jax.methods.base import Method, register_method

FP = register_method(Method(name="fp", description="full precision"))
