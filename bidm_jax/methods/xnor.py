"""``xnor``: XNOR-Net as BiDM's code adapts it (methods.md §2.2–2.4, §5): BiDM's binary conv
with XNOR-Net's fixed box filter as K map; ``quant.xnor_weight_grad='exact'`` gives XNOR-Net's
own weight gradient (1/n + α·1[|W| ≤ 1]) instead of the clipped STE."""
import dataclasses

from bidm_jax.methods.base import Method, register_method


@dataclasses.dataclass(frozen=True)
class XNOR(Method):
    def weight_quantizer(self, qcfg) -> str:
        if qcfg.xnor_weight_grad == "exact":
            return "xnor_exact"
        return super().weight_quantizer(qcfg)


XNOR_NET = register_method(XNOR(
    name="xnor", weight="channel_detached", act="rsign", channel_shift=True,
    input_scale="box", shortcut="scaled", step_ms=29.9,
    description="XNOR-Net W1A1: box-filter K map, scaled shortcut"))
