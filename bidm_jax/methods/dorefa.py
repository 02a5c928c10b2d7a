"""``dorefa``: DoReFa-Net W1A1 (methods.md §5): per-layer E·sign(W/E) weights, {0, 1}
activations round(clip(x, 0, 1)), identity straight-through estimators."""
from bidm_jax.methods.base import Method, register_method

DOREFA = register_method(Method(name="dorefa", weight="dorefa", act="dorefa", step_ms=30.0,
                                description="DoReFa-Net W1A1"))
