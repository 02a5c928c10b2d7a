"""The method and family registries: lookups, registration errors, and the config resolution
that reads a method's and a family's declarations (cheap: no model is built)."""
import pytest

from bidm_jax.configlib import resolve_config
from bidm_jax.methods import BUILT_IN, Method, get_method, list_methods, register_method
from bidm_jax.models import get_family, list_families
from bidm_jax.models.ddim_family import BINARY_LAYERS, FP_LAYERS
from tests.conftest import tiny_config



def test_built_in_methods_and_unknown_names():
    assert set(BUILT_IN) <= set(list_methods())
    with pytest.raises(ValueError, match=r"quant.method='ternary' is invalid; valid choices: "
                                         r"bbcu, bidm, binarydm, binarydm_baseline, dorefa, "
                                         r"efficientdm, fp"):
        get_method("ternary")
    with pytest.raises(ValueError, match="quant.method='ternary'"):
        resolve_config(tiny_config(**{"quant.method": "ternary"}))
    assert "ddim_unet" in list_families()
    with pytest.raises(ValueError, match="model.name='unet3d' is invalid"):
        get_family("unet3d")


def test_registration_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method(name="bidm"))
    with pytest.raises(ValueError, match="unknown weight quantizer 'nope'"):
        register_method(Method(name="needs_nope", weight="nope"))
    assert "needs_nope" not in list_methods()


def test_resolution_reads_method_and_family():
    r = resolve_config(tiny_config(**{"quant.method": "bidm"}), "distill")
    assert (r.distill.tbs, r.distill.loss) == (True, "spd")
    assert (r.quant.fp_layers, r.quant.binary_layers) == (FP_LAYERS, BINARY_LAYERS)
    assert r.train.lr == r.distill.lr == 6e-5
    t = resolve_config(tiny_config(**{"quant.method": "xnor"}), "train")
    assert (t.distill.tbs, t.distill.loss) == (False, "none")
    assert t.train.lr == 1e-3  # not a distillation run: train.lr stays
    assert resolve_config(r, "distill").to_dict() == r.to_dict()  # idempotent
    own = tiny_config(**{"quant.method": "bidm", "quant.fp_layers": ("conv_in",)})
    assert resolve_config(own).quant.fp_layers == ("conv_in",)  # explicit patterns win


def test_a_methods_own_values_enter_the_faithful_table():
    name = "bidm_slow_test"
    if name not in list_methods():
        register_method(Method(name=name, weight="channel_detached", act="rsign",
                               channel_shift=True, distill_defaults=(("tbs", True),),
                               faithful_values=(("paper", "lr", 1e-5),)))
    r = resolve_config(tiny_config(**{"quant.method": name}), "distill")
    assert r.train.lr == 1e-5 and r.distill.spd_lambda == 3e-2
    assert r.distill.tbs is True and r.distill.loss == "none"
