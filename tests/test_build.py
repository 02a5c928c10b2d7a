"""bidm_jax.build: the student from a teacher's parameters (every teacher tensor copied, the
method's extras added, XNOR-Net++'s Γ sized by one trace), the model a workdir holds, and
the errors of an unresolved or unpackable config."""
import numpy as np
import pytest

from bidm_jax import build
from bidm_jax.configlib import resolve_config
from tests.conftest import tiny_config


def _config(method, mode="distill", config_mode=None):
    c = tiny_config(**{"quant.method": method})
    if config_mode:
        c.mode = config_mode
    return resolve_config(c, mode)


@pytest.mark.parametrize("method", ["bidm", "xnor++"])
def test_student_from_teacher_params(method):
    c = _config(method)
    teacher = build.fp_model(c)
    s = build.student(c, teacher.params)
    for name, v in teacher.params.items():  # every teacher tensor, copied as is
        np.testing.assert_array_equal(np.asarray(s.fm.params[name]), np.asarray(v))
    extras = {n for n in s.fm.params if n not in teacher.params}
    if method == "bidm":
        assert "down.0.block.0.conv1.kconv.kernel" in extras
        assert "down.0.block.0.conv1.tau" in extras and "tbs.coefficients" in extras
        assert s.topology is not None and s.carry_init is not None
    else:  # Γ sized from the traced FP model: 8x8 before the downsample, 4x4 after
        betas = {n: s.fm.params[n].shape[0] for n in extras if n.endswith("xnorpp.beta")}
        assert betas and set(betas.values()) == {4, 8}
        assert betas["down.0.block.0.conv1.xnorpp.beta"] == 8
        assert betas["down.1.block.0.conv1.xnorpp.beta"] == 4
        assert s.topology is None and s.carry_init is None
    assert s.feature_names == ["down.0.downsample", "down.1.block.0.conv2",
                               "mid.block_2.conv2", "up.1.upsample"]


def test_the_model_a_workdir_holds():
    teacher_cfg = _config("fp", "sample", config_mode="train")
    fm, _, carry_init = build.sampling_model(teacher_cfg)
    assert carry_init is None and "tbs.coefficients" not in fm.params
    assert sorted(fm.params) == sorted(build.teacher(teacher_cfg).params)
    assert not build.is_student(teacher_cfg)
    fm, _, carry_init = build.sampling_model(_config("bidm", "sample"))
    assert carry_init is not None and "tbs.coefficients" in fm.params
    # an FP student (mode distill, method fp) is a student too
    assert build.is_student(_config("fp", "sample", config_mode="distill"))


def test_errors():
    with pytest.raises(ValueError, match="not resolved"):
        build.student(tiny_config(**{"quant.method": "bidm"}))
    with pytest.raises(ValueError, match="no binary layers to pack"):
        from bidm_jax.quant.packed import PackedOptions
        build.student(_config("fp"), packed=PackedOptions())
    assert build.input_shape(_config("bidm")) == (8, 8, 3)
