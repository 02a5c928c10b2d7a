"""Loading a teacher into a student; the full-size DDIM UNet's bookkeeping."""

import numpy as np
import pytest
from flax import nnx
from flax import traverse_util

from bidm_jax.quant import QuantFactory, fp_factory, load_teacher_params
from tests.conftest import quant_config


def _student(toy_cls, method="bidm", **kw):
    return toy_cls(QuantFactory(quant_config(method, **kw)), nnx.Rngs(1))


def test_teacher_params_load_into_student(toy_cls):
    teacher = toy_cls(fp_factory(), nnx.Rngs(0))
    student = _student(toy_cls, weight_scale="learnable")
    n = load_teacher_params(student, nnx.state(teacher, nnx.Param))
    t_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(teacher, nnx.Param)))
    s_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(student, nnx.Param)))
    assert n == len(t_flat)
    for path, v in t_flat.items():
        np.testing.assert_array_equal(np.asarray(s_flat[path]), np.asarray(v))
    assert len(s_flat) > len(t_flat)  # the student keeps its extras (tau, k-conv, ...)
    # learnable sigma re-initialised from the loaded kernel (BiDM paper Eq. 6)
    k = np.asarray(t_flat[("conv1", "kernel")])
    np.testing.assert_allclose(np.asarray(s_flat[("conv1", "weight_scale")]),
                               np.abs(k).reshape(-1, k.shape[-1]).mean(0), rtol=1e-6)


def test_load_errors_name_the_tensor(toy_cls):
    student = _student(toy_cls)
    teacher = nnx.to_pure_dict(nnx.state(toy_cls(fp_factory(), nnx.Rngs(0)), nnx.Param))
    teacher["conv1"]["kernel"] = np.zeros((3, 3, 8, 17), np.float32)
    with pytest.raises(ValueError, match=r"conv1/kernel.*\(3, 3, 8, 17\)"):
        load_teacher_params(student, teacher)
    with pytest.raises(ValueError, match="extra/kernel"):
        load_teacher_params(student, {"extra": {"kernel": np.zeros((2,), np.float32)}})


def test_full_size_ddim_unet_bookkeeping():
    """methods.md §4.5/§4.6 item 1 on the real DDIM CIFAR-10 UNet, traced abstractly."""
    from configs.default import get_config

    from bidm_jax.models import build_unet
    from bidm_jax.quant import summarize

    model = nnx.eval_shape(lambda: build_unet(get_config().model, rngs=nnx.Rngs(0),
                                              factory=fp_factory()))
    _, s = summarize(model, (32, 32, 3), skip_patterns=("*.nin_shortcut",))
    assert s["params"]["teacher"] == 35_746_307
    assert s["paper"]["fp32_size_mib"] == pytest.approx(136.36, abs=0.01)
    assert s["macs"]["fp_layers"] / 1e9 == pytest.approx(6.0540, abs=1e-4)
    assert s["macs"]["unclaimed"] / 1e9 == pytest.approx(0.1679, abs=1e-4)
    assert s["macs"]["skip"] / 1e9 == pytest.approx(0.250, abs=1e-3)
