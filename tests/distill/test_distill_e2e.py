"""``--mode distill`` end to end on the tiny config and 8 fake CPU devices: the run writes
checkpoints and samples, the sharded step equals the 1-device step, every method's loss has
finite gradients, a missing teacher is a clear error."""
import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from bidm_jax import build, parallel
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.main import run
from bidm_jax.methods import BUILT_IN
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.training import checkpoint, optim
from tests.conftest import resolved, tiny_config


def build_distill(c):
    """The student, loss and sampling functions of a resolved config, from a random teacher."""
    fm = Functional(build_unet(c.model, rngs=nnx.Rngs(0)))
    trainable, student = build.distill_trainable(c, fm, fm.params)
    return SimpleNamespace(config=c, loss_fn=trainable.loss_fn, student_fm=student.fm,
                           aux=student.fm.aux, topology=student.topology,
                           sample_model_fn=student.model_fn, carry_init=student.carry_init)


def _config(teacher: str, method: str = "bidm", **overrides):
    """Tiny config without attention (cheaper to compile; up.1's block outputs then mix)."""
    c = tiny_config(**{"model.attn_resolutions": (), **overrides})
    c.quant.method = method
    c.distill.teacher = teacher
    c.distill.lr = 1e-3
    return c


def _one_level(method: str, **distill):
    """1-level UNet (paper TBS topology) for the per-method and sharding checks."""
    c = _config("", method, **{"model.ch_mult": (1,), "model.dropout": 0.0})
    c.distill.tbs_topology = "paper"
    for k, v in distill.items():
        c.distill[k] = v
    return build_distill(resolved(c))


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--mode train"):
        run(_config(""), str(tmp_path), "distill")
    with pytest.raises(FileNotFoundError, match="convert"):
        run(_config(str(tmp_path / "nowhere")), str(tmp_path), "distill")


def test_run_distill_writes_checkpoints_and_samples(tmp_path):
    """3 BiDM steps (TBS + SPD, dropout on) over the 8-device mesh (batch 16) from a teacher
    checkpoint, then DDIM sampling with the TBS carry. 1-level UNet, paper topology (the
    code topology's wiring and carry are checked in test_tbs and below; CPU compile time)."""
    assert jax.device_count() == 8
    over = {"model.ch_mult": (1,), "train.num_steps": 3, "ckpt.save_every": 3}
    teacher = str(tmp_path / "teacher")
    fm = Functional(build_unet(_config("", **over).model, rngs=nnx.Rngs(0)))
    checkpoint.write_params(teacher, {k: np.asarray(v) for k, v in fm.params.items()})
    c = _config(teacher, **over)
    c.distill.tbs_topology = "paper"
    work = str(tmp_path / "run")
    os.makedirs(work)
    final = run(c, work, "distill")
    assert np.isfinite(final["loss"]) and np.isfinite(final["distill_loss"])
    assert final["distill_loss"] > 0 and final["nonfinite_total"] == 0
    params = checkpoint.load_params(os.path.join(work, "checkpoints"), use_ema=False)
    assert params["tbs.coefficients"].shape == (100, 2)
    # 3 Adam steps moved the table away from its 0.3 init (it is trained).
    assert not np.allclose(params["tbs.coefficients"], 0.3)
    samples = np.load(os.path.join(work, "samples", "samples_distill.npz"))["arr_0"]
    assert samples.shape == (8, 8, 8, 3) and samples.dtype == np.uint8
    # --mode sample rebuilds the student (with its TBS carry) from the workdir's checkpoint:
    # the same seed gives the same images as the end-of-training samples.
    run(c, work, "sample")
    again = np.load(os.path.join(work, "samples", "samples.npz"))["arr_0"]
    np.testing.assert_array_equal(again, samples)
    info = json.load(open(os.path.join(work, "distill.json")))
    assert info["tbs"] and info["loss"] == "spd" and info["lr"] == 1e-3
    assert info["tbs_mix"] == [["up.0.block.0", "up.0.block.0", 0],
                               ["up.0.block.1", "up.0.block.1", 1]]
    assert info["tbs_carry_floats_per_sample"] == 2 * 8 * 8 * 32


def _bidm_step_inputs(s):
    flat = optim.Flat(s.student_fm.params)
    opt = optim.make_optimizer(s.config.train)
    state0 = optim.init_state(flat.ravel(s.student_fm.params), opt, 0)
    x0 = jax.random.uniform(jax.random.key(5), (16, 8, 8, 3), minval=-1, maxval=1)
    step = lambda st, b: optim.guarded_update(st, s.loss_fn, b, opt, 0.9, flat.unravel)
    return step, state0, x0


@pytest.mark.parametrize("method", ["bidm", "qdm"])
def test_sharded_step_equals_single_device_step(method):
    """One full optimizer step (loss, grads, clip, Adam, EMA) over an 8-device batch-sharded
    mesh equals the 1-device step: BiDM (TBS + SPD) and Q-DM (LSQ, TaQ's minibatch statistics
    over the whole sharded batch and its running statistics, NeM). BinaryDM's LRM is a batch
    mean of the same kind as SPD and NeM; its sharded run is the distillation of
    tests/methods/test_binarydm.py on the 8-device mesh."""
    s = _one_level(method)
    step, state0, x0 = _bidm_step_inputs(s)
    if s.aux:
        state0["aux"] = dict(s.aux)
    results = []
    for n in (1, 8):
        mesh = parallel.make_data_mesh(n)
        repl = parallel.replicated(mesh)
        f = jax.jit(step, in_shardings=(repl, parallel.batch_sharded(mesh)))
        state, metrics = f(jax.device_put(state0, repl), x0)
        assert len(state["params"].sharding.device_set) == n
        results.append((np.asarray(state["params"]), {k: float(v) for k, v in metrics.items()},
                        jax.device_get(state.get("aux", {}))))
    (p1, m1, a1), (p8, m8, a8) = results
    if method == "qdm":
        running = [n for n in a1 if ".running_" in n]
        assert running and all(not np.array_equal(a1[n], state0["aux"][n]) for n in running)
        for n in running:
            np.testing.assert_allclose(a8[n], a1[n], rtol=1e-5, atol=1e-6, err_msg=n)
    assert m1["distill_loss"] > 0
    for k in ("loss", "noise_loss", "distill_loss", "grad_norm", "ebb_reg"):
        if k in m1:
            np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, err_msg=k)
    # Adam's first step is ~lr·sign(g): allow float reduction-order noise only (Q-DM: the
    # sharded batch moments of TaQ sum in another order, which moves a 4-bit rounding of a
    # few operands; the largest such difference is ~5e-5 of a 1e-3 step).
    np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=1e-4 if method == "qdm" else 3e-5)
    assert not np.allclose(p1, np.asarray(state0["params"]))  # the step did move the params


def test_sampling_carries_features():
    """DDIM over the TBS carry of the tiny config's BiDM student (code topology): the final
    carry holds the previous step's mid.block_2 (64@4x4, read by up.1's attention outputs)
    and up.1.upsample (64@8x8) features, valid after the first step."""
    from bidm_jax.diffusion import samplers, schedules
    c = tiny_config()
    c.quant.method = "bidm"
    c = resolved(c)
    assert c.distill.tbs and c.distill.tbs_topology == "code"
    s = build_distill(c)
    assert s.topology.mix == (("up.1.attn.0", "mid.block_2", 0),
                              ("up.1.attn.1", "mid.block_2", 0),
                              ("up.1.upsample", "up.1.upsample", 0))
    abar = schedules.from_config(c.diffusion)
    x_T = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    fn = lambda x, t, carry: s.sample_model_fn(s.student_fm.params, x, t, carry)
    x0, carry = jax.jit(lambda x: samplers.ddim_sample(fn, x, abar, steps=3,
                                                       carry=s.carry_init(x)))(x_T)
    assert x0.shape == (2, 8, 8, 3) and np.all(np.isfinite(x0))
    assert bool(carry["valid"])
    assert {k: v.shape for k, v in carry["feats"].items()} == {
        "mid.block_2": (2, 4, 4, 64), "up.1.upsample": (2, 8, 8, 64)}
    assert np.any(carry["feats"]["up.1.upsample"])


# Every method through run_distill's loss; the XNOR + TBS + SPD ablation as one more entry.
CASES = {m: (m, {}) for m in BUILT_IN if m != "bidm"}  # bidm: the tests above
CASES["xnor+tbs+spd"] = ("xnor", {"tbs": True, "loss": "spd"})
CASES["binarydm_code"] = ("binarydm", {"faithful_to": "code"})


@pytest.fixture(scope="module")
def method_grads():
    """(loss, metrics), grads of every case, computed in one jitted program (CPU compile time
    dominates these tests; one program compiles faster than eight)."""
    setups = {name: _one_level(m, **d) for name, (m, d) in CASES.items()}
    x0 = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)

    def all_grads(params):
        return {n: jax.value_and_grad(
            lambda p, s=s: s.loss_fn(p, s.aux, x0, jax.random.key(2), 1), has_aux=True)(
                params[n]) for n, s in setups.items()}

    return setups, jax.jit(all_grads)({n: s.student_fm.params for n, s in setups.items()})


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_backward_per_method(method_grads, case):
    """Finite loss and gradients, and a non-zero gradient on a binary layer's kernel
    (through the estimators); the TBS table and SPD are live where enabled."""
    setups, out = method_grads
    s = setups[case]
    (loss, (metrics, _)), g = out[case]
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(v)) for v in g.values())
    assert np.any(np.asarray(g["down.0.block.0.conv1.kernel"]))
    assert (tbs_lib.TABLE_NAME in g) == bool(s.config.distill.tbs)
    if s.config.distill.tbs:
        assert np.any(np.asarray(g[tbs_lib.TABLE_NAME]))
    if s.config.distill.loss in ("spd", "lrm", "nem"):
        assert float(metrics["distill_loss"]) > 0
    else:
        assert float(metrics["distill_loss"]) == 0.0
        extra = float(metrics.get("ebb_reg", 0.0)) * s.config.quant.ebb_tau
        np.testing.assert_allclose(float(loss), float(metrics["noise_loss"]) + extra, rtol=1e-6)
