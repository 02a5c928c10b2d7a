"""Teacher training: sharded step == 1-device step, non-finite skipping, resume after an
interrupt gives the same next losses, clear errors for bad configs and missing data. (The
divergence stop runs through the command line in tests/test_bad_inputs.py.)"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax import build, parallel
from bidm_jax.build import Trainable, teacher_loss_fn
from bidm_jax.configlib import validate_config
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.errors import TrainingDiverged
from bidm_jax.main import run
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.parallel import place
from bidm_jax.training import optim
from bidm_jax.training.loop import Loop, scalar
from tests.conftest import resolved, tiny_config


def trainable(cfg, fm):
    """The teacher's Trainable around an existing Functional (one compile for the module)."""
    return Trainable(fm, fm.params, teacher_loss_fn(fm, cfg),
                     lambda v, x, t, c: fm(v, x, t, c), None, None, build.input_shape(cfg),
                     "_train")


@pytest.fixture(scope="module")
def setup():
    cfg = resolved(tiny_config(), "train")
    fm = Functional(build_unet(cfg.model, rngs=nnx.Rngs(0)))
    source = BatchSource(load_images(cfg.data), cfg.train.batch_size, 0, True)
    return cfg, fm, source


def one_step(cfg, fm, batch, n_devices):
    mesh = parallel.make_data_mesh(n_devices)
    repl = parallel.replicated(mesh)
    opt = optim.make_optimizer(cfg.train)
    flat = optim.Flat(fm.params)
    state = place(optim.init_state(flat.ravel(fm.params), opt, 0), repl)
    loss_fn = teacher_loss_fn(fm, cfg)
    step = jax.jit(lambda s, b: optim.guarded_update(s, loss_fn, b, opt, cfg.train.ema_decay,
                                                     flat.unravel),
                   in_shardings=(repl, parallel.batch_sharded(mesh)), out_shardings=(repl, repl))
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    return {**state, "params": flat.unravel(state["params"]),
            "ema": flat.unravel(state["ema"])}, metrics


def test_sharded_step_equals_single_device(setup):
    cfg, fm, source = setup
    assert jax.device_count() == 8
    batch = source.local_batch(0)
    # Adam's first step is g/|g| per weight, which amplifies reduction-order noise of tiny
    # gradients arbitrarily; a larger eps makes the update proportional to g so the two
    # layouts can be compared tightly.
    cfg = cfg.copy_and_resolve_references()
    cfg.train.adam_eps = 1e-2
    s1, m1 = one_step(cfg, fm, batch, 1)
    s8, m8 = one_step(cfg, fm, batch, 8)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-5)
    moved = 0.0
    for k in s1["params"]:
        np.testing.assert_allclose(s1["params"][k], s8["params"][k], rtol=1e-5, atol=1e-7)
        moved += float(jnp.abs(s1["params"][k] - fm.params[k]).sum())
    assert moved > 0  # the step really updated the parameters


def test_nonfinite_update_is_skipped_and_counted(setup):
    cfg, fm, source = setup
    batch = source.local_batch(0).copy()
    batch[3, 2, 2, 1] = np.nan
    state, metrics = one_step(cfg, fm, batch, 8)
    assert int(state["nonfinite"]) == 1 and int(state["step"]) == 1
    assert float(metrics["skipped"]) == 1.0
    for k in fm.params:
        np.testing.assert_array_equal(state["params"][k], fm.params[k])
        np.testing.assert_array_equal(state["ema"][k], fm.params[k])


class Interrupt(Exception):
    pass


def losses_of(workdir):
    with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def test_checkpoint_without_the_streak_still_resumes(setup, tmp_path):
    """Checkpoints written before ``nonfinite_streak`` existed restore with the streak at 0."""
    cfg, fm, _ = setup
    old = Loop(cfg, str(tmp_path), trainable(cfg, fm))
    old.state = {k: v for k, v in old.state.items() if k != "nonfinite_streak"}
    old.save(wait=True)
    old.close()
    new = Loop(cfg, str(tmp_path), trainable(cfg, fm))
    assert new.resumed and int(scalar(new.state["nonfinite_streak"])) == 0
    new.close()


def test_repeated_tuple_override_replaces():
    from bidm_jax.main import last_override_wins

    c = tiny_config()
    c.model.ch_mult = (1, 2, 1, 2)   # what ml_collections made of the two flags below
    argv = ["--config.model.ch_mult=(1,2)", "--mode=train", "--config.model.ch_mult=1,2",
            "--config.train.lr=1e-3", "--config.train.lr=2e-3"]
    assert last_override_wins(c, argv) == ["model.ch_mult"]
    assert c.model.ch_mult == (1, 2)
    c.model.attn_resolutions = (4, 8)
    assert last_override_wins(c, ["--config.model.attn_resolutions=(4,8)",
                                  "--config.model.attn_resolutions=4"]) == \
        ["model.attn_resolutions"]
    assert c.model.attn_resolutions == (4,)


def test_cli_maps_divergence_to_exit_code_3(monkeypatch, capsys):
    from bidm_jax import main as cli

    def diverge(config, workdir, mode):
        raise TrainingDiverged("training diverged: test")

    monkeypatch.setattr(cli, "run", diverge)
    monkeypatch.setattr(cli, "FLAGS", type("F", (), {"config": tiny_config(), "mode": "train",
                                                     "workdir": "unused"})())
    with pytest.raises(SystemExit) as e:
        cli.main(["prog"])
    assert e.value.code == 3
    assert capsys.readouterr().err.strip() == "bidm_jax: error: training diverged: test"


def test_loss_goes_down_on_digits(tmp_path):
    cfg = tiny_config()
    cfg.train.num_steps = 40
    cfg.train.log_every = 10
    cfg.ckpt.save_every = 40
    cfg.train.lr = 2e-3
    cfg.diffusion.loss_reduction = "mean"
    run(cfg, str(tmp_path), "train")
    losses = losses_of(tmp_path)
    assert np.mean([losses[30], losses[40]]) < 0.7 * np.mean([losses[10], losses[20]])
    samples = np.load(tmp_path / "samples" / "samples_train.npz")["arr_0"]
    assert samples.shape == (8, 8, 8, 3) and samples.dtype == np.uint8
    assert os.path.exists(tmp_path / "samples" / "grid_train.png")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "logs"))


@pytest.mark.parametrize("field,value,choices", [
    ("diffusion.sampler", "euler", "ddim, ddpm"),
    ("diffusion.schedule", "cosine", "linear, sqrt_linear"),
    ("data.dataset", "mnist", "cifar10, digits"),
    ("diffusion.loss_reduction", "max", "sum, mean"),
    ("mesh.distributed", "maybe", "auto, yes, no"),
    ("model.dtype", "float16", "float32, bfloat16"),
])
def test_bad_config_values_list_the_choices(field, value, choices):
    cfg = tiny_config(**{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r}.*{choices}"):
        validate_config(cfg)


@pytest.mark.parametrize("field,value,msg", [
    ("train.batch_size", 0, "train.batch_size=0 must be > 0"),
    ("train.ema_decay", 1.5, r"train.ema_decay=1.5 must be in \[0, 1\)"),
    ("diffusion.sample_steps", 2000, "diffusion.sample_steps=2000"),
    ("model.resolution", 12, "model.resolution=12 differs"),
])
def test_bad_numbers_fail_at_start_up(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        validate_config(tiny_config(**{field: value}))


def test_missing_cifar_says_how_to_get_it(tmp_path):
    cfg = tiny_config(**{"data.dataset": "cifar10", "data.image_size": 32,
                         "data.path": str(tmp_path / "nowhere.tar.gz")})
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_images(cfg.data)


def test_batch_must_divide_over_devices():
    mesh = parallel.make_data_mesh(8)
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        parallel.check_batch(12, mesh)
