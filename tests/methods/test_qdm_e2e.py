"""A tiny Q-DM W4A4 run end to end on 8 fake CPU devices: TaQ (batch_ema) + LSQ + unrolled NeM,
interrupted after 2 steps and resumed to 4; the TaQ running statistics are checkpointed,
restored bit-exactly, advanced by training only, and what sampling reads; export packs the
4-bit weights and packed sampling reproduces fake-quant sampling."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax import build, export
from bidm_jax.main import run
from bidm_jax.training import checkpoint
from tests.conftest import resolved, tiny_config
from tests.methods.lowbit_helpers import assert_packed_samples_match, interrupted_distill


def _config(teacher, **over):
    # One level (compile time); the middle block's attention carries TaQ.
    c = tiny_config(**{"train.num_steps": 4, "ckpt.save_every": 2, "diffusion.sampler": "ddim",
                       "model.attn_resolutions": (), "model.ch_mult": (1,), **over})
    c.quant.method = "qdm"
    c.distill.teacher = teacher
    c.distill.lr = 1e-3
    c.distill.nem_unroll = 2
    return c


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, monkeypatch_module):
    return interrupted_distill(tmp_path_factory, monkeypatch_module, _config, "qdm")


def _ckpt(work, step=None):
    params, aux = checkpoint.load_params(os.path.join(work, "checkpoints"), step=step,
                                         use_ema=False, with_aux=True)
    return params, aux


RUNNING = ("mid.attn_1.operands.taq_q.running_mean", "mid.attn_1.operands.taq_k.running_var")


def test_running_statistics_survive_the_interruption(distilled):
    work, final, started = distilled
    assert np.isfinite(final["loss"]) and final["nonfinite_total"] == 0
    info = json.load(open(os.path.join(work, "distill.json")))
    assert (info["loss"], info["nem_unroll"], info["taq"]) == ("nem", 2, "batch_ema")
    rows = [json.loads(line) for line in open(os.path.join(work, "logs", "metrics.jsonl"))]
    assert [r["step"] for r in rows if "distill_loss" in r] == [1, 2, 3, 4]
    assert all(r["distill_loss"] > 0 for r in rows if "distill_loss" in r)
    _, early = _ckpt(work, 2)
    _, late = _ckpt(work, 4)
    assert started["resumed"]
    for n in early:
        np.testing.assert_array_equal(np.asarray(started["aux"][n]), np.asarray(early[n]), n)
    for n in RUNNING:   # calibrated (not the 0 / 1 init), then advanced by steps 3-4
        assert not np.allclose(early[n], 0.0) and not np.allclose(early[n], 1.0)
        assert not np.array_equal(early[n], late[n])


def test_sampling_reads_the_running_statistics(distilled):
    """``--mode sample`` reproduces the end-of-training samples from the checkpoint; the
    forward depends on the running statistics (changing them changes ε̂)."""
    work, _, _ = distilled
    c = _config("unused")
    run(c, work, "sample")
    again = np.load(os.path.join(work, "samples", "samples.npz"))["arr_0"]
    np.testing.assert_array_equal(
        again, np.load(os.path.join(work, "samples", "samples_distill.npz"))["arr_0"])
    r = resolved(c, "sample")
    fm = build.sampling_model(r)[0]
    params, aux = _ckpt(work)
    values = {**params, **build.sampling_aux(aux)}
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    f = jax.jit(lambda v: fm.module(v)(x, jnp.array([100, 800]), None)[0])
    shifted = {**values, RUNNING[0]: values[RUNNING[0]] + 1.0}
    assert not np.allclose(f(values), f(shifted), atol=1e-4)


def test_packed_w4a4_sampling_equals_fake_quant(distilled):
    work, _, _ = distilled
    c = _config("unused")
    run(c, work, "export")
    _, _, meta = export.read_packed(os.path.join(work, "export", "packed.npz"))
    layers = meta["packed_layers"]
    assert {(v["bits_w"], v["bits_a"]) for v in layers.values()} == {(4, 4)}
    assert "conv_in" not in layers and "mid.block_1.temb_proj" not in layers
    assert_packed_samples_match(c, work)
