"""Loading a teacher into a student; build_student against the UNet contract."""

import numpy as np
import pytest
from flax import nnx
from flax import traverse_util

from bidm_jax.quant import (QuantFactory, build_student, fp_factory, get_quant_config,
                            load_teacher_params)


def _student(toy_cls, method="bidm", **kw):
    cfg = get_quant_config()
    cfg.method = method
    for k, v in kw.items():
        cfg[k] = v
    return toy_cls(QuantFactory(cfg), nnx.Rngs(1))


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


def _unet_contract():
    try:
        from bidm_jax.models import build_unet
    except ImportError:
        pytest.skip("bidm_jax.models.build_unet is not importable")
    from configs.default import get_config

    model_cfg = get_config().model
    # an 8x8 two-level UNet keeps the CPU test small (GroupNorm needs multiples of 32)
    model_cfg.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                          resolution=8))
    return build_unet, model_cfg


@pytest.mark.parametrize("method", ["bidm", "xnor++"])
def test_build_student_from_unet_teacher(method):
    build_unet, model_cfg = _unet_contract()
    teacher = build_unet(model_cfg, rngs=nnx.Rngs(0), factory=fp_factory())
    cfg = get_quant_config()
    cfg.method = method
    student = build_student(nnx.state(teacher, nnx.Param), model_cfg, cfg, rngs=nnx.Rngs(1),
                            input_shape=(1, 8, 8, 3))
    t_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(teacher, nnx.Param)))
    s_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(student, nnx.Param)))
    for path, v in t_flat.items():
        np.testing.assert_array_equal(np.asarray(s_flat[path]), np.asarray(v))
    extras = {p[-2:] for p in s_flat if p not in t_flat}
    if method == "bidm":
        assert ("kconv", "kernel") in extras and any(p[-1] == "tau" for p in extras)
    else:  # Gamma sized from the traced FP model: 4x4 output after the downsample
        gammas = [p for p in s_flat if p[-2:] == ("xnorpp", "beta")]
        assert gammas and all(s_flat[p].shape[0] in (4, 8) for p in gammas)


def test_full_size_ddim_unet_bookkeeping():
    """methods.md §4.5/§4.6 item 1 on the real DDIM CIFAR-10 UNet, traced abstractly."""
    try:
        from bidm_jax.models import build_unet
    except ImportError:
        pytest.skip("bidm_jax.models.build_unet is not importable")
    from configs.default import get_config

    from bidm_jax.quant import summarize

    model = nnx.eval_shape(lambda: build_unet(get_config().model, rngs=nnx.Rngs(0),
                                              factory=fp_factory()))
    _, s = summarize(model, (32, 32, 3))
    assert s["params"]["teacher"] == 35_746_307
    assert s["paper"]["fp32_size_mib"] == pytest.approx(136.36, abs=0.01)
    assert s["macs"]["fp_layers"] / 1e9 == pytest.approx(6.0540, abs=1e-4)
    assert s["macs"]["unclaimed"] / 1e9 == pytest.approx(0.1679, abs=1e-4)
    assert s["macs"]["skip"] / 1e9 == pytest.approx(0.250, abs=1e-3)


def test_build_student_short_form_from_checkpoint_dict():
    """``build_student(teacher_params, config)`` with the flat dotted dict a project
    checkpoint holds (what ``checkpoint.load_params`` returns)."""
    from bidm_jax.models.functional import Functional
    from tests.conftest import tiny_config

    config = tiny_config()
    config.quant.method = "xnor++"
    build_unet, _ = _unet_contract()
    fm = Functional(build_unet(config.model, rngs=nnx.Rngs(0)))
    student = build_student(fm.params, config)
    s_flat = Functional(student).params
    for name, v in fm.params.items():
        np.testing.assert_array_equal(np.asarray(s_flat[name]), np.asarray(v))
    assert any(n.endswith("xnorpp.beta") for n in s_flat)
    with pytest.raises(ValueError, match="model/quant"):
        build_student(fm.params, config.model)
