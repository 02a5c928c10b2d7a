"""``xnor++``: XNOR-Net++ (methods.md §5): unscaled sign weights and inputs, the learnable
Γ = α ⊗ β ⊗ γ (output channel × row × column) as the only scale, no shortcut. Γ is sized by
each conv's output size, so the model is traced once before it is built."""
import dataclasses

from bidm_jax.methods.base import Method, register_method


@dataclasses.dataclass(frozen=True)
class XNORPlusPlus(Method):
    def validate(self, qcfg) -> None:
        if qcfg.input_scale != "auto":
            # Γ is what makes a layer XNOR-Net++; without it the weights have no scale.
            raise ValueError(f"quant.input_scale={qcfg.input_scale!r} cannot replace "
                             "XNOR-Net++'s Gamma; use 'auto' with method 'xnor++'")

    def layer_spec(self, path, qcfg, group=None):
        self.validate(qcfg)
        return super().layer_spec(path, qcfg, group)


XNORPP = register_method(XNORPlusPlus(
    name="xnor++", weight="sign", act="sign_ste", input_scale="xnorpp", step_ms=31.0,
    description="XNOR-Net++ W1A1: Gamma = alpha x beta x gamma"))
