"""A method registered from outside the package: no package file is edited, yet it distils,
samples, summarises and exports, and its calibrated auxiliary state survives an interrupted
run bit-exactly.

The method, ``two_basis_test``:
* weights: a two-basis binarizer W_q = s1·sign(W) + s2·sign(W − s1·sign W) with learnable
  per-output-channel s1, s2 (init mean|W| and mean|W − s1·sign W|), two sign planes;
* activations: sign(x − m) where m is auxiliary state set from a calibration batch (the
  mean of the layer input), plus a running mean of |x| advanced by every training step
  (auxiliary state that is not read by the forward, only carried);
* attention: clipped-STE signs on the q and k operands (the factory's attention hook).
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax import build, parallel
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.main import run
from bidm_jax.methods import Method, get_method, register_method
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.quant import QVar, Quantizer, register, ste
from bidm_jax.training import checkpoint
from bidm_jax.training.loop import Loop
from tests.conftest import resolved, tiny_config

NAME = "two_basis_test"


def _abs_mean(w):
    return jnp.mean(jnp.abs(w), axis=tuple(range(w.ndim - 1)))


def two_basis(w, s1, s2):
    """s1·sign(W) + s2·sign(W − s1·sign W), clipped STE through both signs."""
    b1 = ste.sign_ste(w)
    return s1 * b1 + s2 * ste.sign_ste(w - s1 * jax.lax.stop_gradient(b1))


def two_basis_planes(w, s1, s2):
    w = np.asarray(w)
    return [(w, s1), (w - np.asarray(s1) * np.sign(w), s2)]


def calibrated_sign(x, shift, absmean):
    del absmean  # carried, not read
    return ste.sign_ste(x - shift)


S1 = QVar("s1", "basis_1", lambda w, i: _abs_mean(w), from_kernel=True)
S2 = QVar("s2", "basis_2", lambda w, i: _abs_mean(w - _abs_mean(w) * jnp.sign(w)),
          from_kernel=True)
SHIFT = QVar("shift", "calib_shift", lambda w, i: jnp.zeros((), jnp.float32), kind="aux",
             calibrate=lambda x: jnp.mean(x).astype(jnp.float32))
ABSMEAN = QVar("absmean", "absmean", lambda w, i: jnp.ones((), jnp.float32), kind="aux",
               update=lambda v, x: 0.9 * v + 0.1 * jnp.mean(jnp.abs(x)).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class TwoBasis(Method):
    def attention_quantizers(self, path, qcfg):
        return {"q": "sign_ste", "k": "sign_ste"}


def _register():
    try:
        return get_method(NAME)
    except ValueError:
        pass
    register(Quantizer(NAME, "weight", 1, two_basis, (S1, S2), "two bases, clip STE",
                       planes=2, plane_fn=two_basis_planes))
    register(Quantizer("calibrated_sign_test", "activation", 1, calibrated_sign,
                       (SHIFT, ABSMEAN), "sign(x - calibrated mean), clip STE"))
    return register_method(TwoBasis(name=NAME, weight=NAME, act="calibrated_sign_test",
                                    shortcut="scaled"))


METHOD = _register()


def _config(teacher: str, **over):
    # One device: the sharded step is tested elsewhere, and every run here then compiles the
    # same programs (the persistent cache serves the later ones).
    # One level without attention (compile time); the middle block's attention stays.
    c = tiny_config(**{"train.num_steps": 4, "ckpt.save_every": 2, "diffusion.sampler": "ddpm",
                       "mesh.data": 1, "model.ch_mult": (1,), "model.attn_resolutions": (),
                       **over})
    c.quant.method = NAME
    c.quant.shortcut_scale_init = 0.5
    c.distill.teacher = teacher
    c.distill.lr = 1e-3
    return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "checkpoints")
    fm = Functional(build_unet(_config("").model, rngs=nnx.Rngs(0)))
    checkpoint.write_params(path, {k: np.asarray(v) for k, v in fm.params.items()})
    return path


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, teacher_dir):
    work = str(tmp_path_factory.mktemp("student"))
    final = run(_config(teacher_dir), work, "distill")
    return work, final


def test_the_student_has_the_methods_pieces(teacher_dir):
    c = resolved(_config(teacher_dir))
    s = build.student(c)
    conv = "down.0.block.0.conv1"
    assert {f"{conv}.basis_1", f"{conv}.basis_2"} <= set(s.fm.params)
    assert {f"{conv}.calib_shift", f"{conv}.absmean"} <= set(s.fm.aux)
    assert not any(n.endswith(("calib_shift", "absmean")) for n in s.fm.params)
    assert "mid.attn_1.operands.q" not in s.fm.params  # sign_ste has no variables
    assert METHOD.needs_calibration(s.fm.module(s.fm.params))


def test_distil_calibrates_and_carries_aux(distilled, teacher_dir):
    work, final = distilled
    assert np.isfinite(final["loss"]) and final["nonfinite_total"] == 0
    params, aux = checkpoint.load_params(os.path.join(work, "checkpoints"), use_ema=False,
                                         with_aux=True)
    conv = "down.0.block.0.conv2"
    # calibrated from the first batch (the init is 0), then fixed; the running mean moved
    assert float(aux[f"{conv}.calib_shift"]) != 0.0
    assert float(aux[f"{conv}.absmean"]) != 1.0
    k = np.asarray(params[f"{conv}.kernel"])
    assert params[f"{conv}.basis_1"].shape == (k.shape[-1],)
    # the attention hook quantized q and k: the student differs from one without it
    assert json.load(open(os.path.join(work, "distill.json")))["method"] == NAME


def test_sample_summary_export_and_packed_sampling(distilled, teacher_dir):
    work, _ = distilled
    c = _config(teacher_dir)
    trained = np.load(os.path.join(work, "samples", "samples_distill.npz"))["arr_0"]
    path = run(c, work, "sample")
    np.testing.assert_array_equal(np.load(path)["arr_0"], trained)  # aux read back

    summary = run(c, work, "summary")
    by_bits = summary["params"]["by_bits"]
    assert by_bits.get("2", 0) > 0 and by_bits.get("1", 0) == 0  # two planes per weight
    assert summary["stored"]["bops"] == 2 * summary["macs"]["binary"]

    report = run(c, work, "export")
    assert report["packed_tensors"] > 10
    packed = np.load(os.path.join(work, "export", "packed.npz"))
    bits = packed["down.0.block.0.conv2.kernel_bits"]
    assert bits.shape[0] == 2 and packed["down.0.block.0.conv2.kernel_scale"].shape[0] == 2
    assert "down.0.block.0.conv2.basis_1" not in packed.files  # folded into the scales
    assert "down.0.block.0.conv2.calib_shift" in packed.files  # auxiliary state kept

    # Packed vs fake-quant sampling, both in full fp32 (a GPU's default TF32 convs would make
    # the fake-quant reference itself inexact).
    pc = _config(teacher_dir, **{"sample.packed": "auto"})
    with jax.default_matmul_precision("highest"):
        want = np.load(run(c, work, "sample"))["arr_0"]
        got = np.load(run(pc, work, "sample"))["arr_0"]
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01


class Interrupt(Exception):
    pass


def test_calibrated_state_survives_an_interrupted_run(tmp_path, teacher_dir):
    """Kill after the step-2 checkpoint, resume: the calibrated shifts, the running means and
    the parameters equal an uninterrupted run's bit for bit, and the resumed run does not
    calibrate again."""
    c = resolved(_config(teacher_dir))
    teacher_fm, teacher_params = build.load_teacher(c)
    mesh = parallel.make_data_mesh(1)
    teacher_params = parallel.place(teacher_params, parallel.replicated(mesh))
    trainable, _ = build.distill_trainable(c, teacher_fm, teacher_params)
    assert trainable.calibrate_fn is not None
    source = BatchSource(load_images(c.data), c.train.batch_size, c.seed, True)

    full = Loop(c, str(tmp_path / "a"), trainable)
    full.run(source)
    full.close()

    class Dying(BatchSource):
        def local_batch(self, step):
            if step == 3:
                raise Interrupt()
            return super().local_batch(step)

    first = Loop(c, str(tmp_path / "b"), trainable)
    with pytest.raises(Interrupt):
        first.run(Dying(source.images, c.train.batch_size, c.seed, True))
    first.close()
    calibrated = {n: np.asarray(v) for n, v in first.state["aux"].items()
                  if n.endswith("calib_shift")}

    def no_calibration(*args):
        raise AssertionError("a resumed run calibrated again")

    resumed = Loop(c, str(tmp_path / "b"),
                   dataclasses.replace(trainable, calibrate_fn=no_calibration))
    assert resumed.resumed and resumed.step == 2
    resumed.run(source)
    resumed.close()
    # The calibrated values come back from the checkpoint bit for bit (any backend).
    assert calibrated and any(float(v) != 0.0 for v in calibrated.values())
    for n, v in calibrated.items():
        np.testing.assert_array_equal(np.asarray(resumed.state["aux"][n]), v, err_msg=n)
    # ... and the whole run equals the uninterrupted one: bit for bit on the CPU. A GPU's
    # reductions and TF32 convolutions are not deterministic run to run: there the running
    # statistics agree to float noise and the parameters (Adam's first steps follow sign(g),
    # which noise can flip) are not compared.
    a, b = full.state["aux"], resumed.state["aux"]
    assert sorted(a) == sorted(b)
    if jax.default_backend() != "cpu":
        for n in a:
            np.testing.assert_allclose(np.asarray(b[n]), np.asarray(a[n]), rtol=1e-3, err_msg=n)
        return
    for n in a:
        np.testing.assert_array_equal(np.asarray(b[n]), np.asarray(a[n]), err_msg=n)
    for n, v in full.params(ema=False).items():
        np.testing.assert_array_equal(np.asarray(resumed.params(ema=False)[n]), np.asarray(v),
                                      err_msg=n)


def test_attention_hook_quantizes_the_operands(teacher_dir):
    """The factory's attention hook puts the method's quantizers on q and k (not v, not the
    softmax weights) of every attention block."""
    from bidm_jax.models.layers import attention
    from bidm_jax.quant.extras import AttentionOperands

    s = build.student(resolved(_config(teacher_dir)))
    ops = s.fm.module(s.fm.params).mid.attn_1.operands
    assert isinstance(ops, AttentionOperands) and ops.names == {"q": "sign_ste", "k": "sign_ste"}
    q, k, v = (jax.random.normal(key, (2, 5, 8)) for key in jax.random.split(jax.random.key(0), 3))
    got = attention(q, k, v, ops)
    np.testing.assert_allclose(got, attention(jnp.sign(q), jnp.sign(k), v), rtol=1e-6)
    assert not np.allclose(got, attention(q, k, v), atol=1e-3)
