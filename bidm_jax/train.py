"""Full-precision teacher training (``--mode train``): ε-prediction DDPM training of the UNet,
data parallel over a ``data`` mesh, resumable, with EMA, logging and sample grids."""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from bidm_jax import checkpoint, logs, optim, parallel
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.diffusion import losses, schedules
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional, check_shapes
from bidm_jax.sample import fp_model_fn, generate, make_sampler, write_samples


def teacher_loss_fn(fm: Functional, config):
    """loss(params, x0, key, step) -> (ε loss, {}) for x0 (B, H, W, C) in [-1, 1] (DDPM Eq. 14;
    summed or averaged over pixels per ``diffusion.loss_reduction``)."""
    dcfg = config.diffusion
    abar = np.asarray(schedules.from_config(dcfg), np.float32)
    use_dropout = config.model.dropout > 0

    def loss_fn(params, x0, key, step=None):
        k_t, k_n, k_d = jax.random.split(key, 3)
        t = losses.sample_timesteps(k_t, x0.shape[0], dcfg.num_timesteps, dcfg.antithetic)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = losses.q_sample(x0, t, noise, abar)
        eps, _ = fm(params, x_t, t, None, dropout_rng=k_d if use_dropout else None)
        return losses.eps_loss(eps, noise, dcfg.loss_reduction), {}

    return loss_fn


def place(tree, sharding):
    """Puts host values on ``sharding`` (works with several processes, each holding the same
    values)."""
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree_util.tree_map(put, tree)


def scalar(x) -> float:
    """A replicated scalar as a Python float on any process."""
    return float(np.asarray(x.addressable_data(0)))


def peak_memory_bytes() -> int:
    """Largest peak allocation over this process's devices (0 where the backend has no stats,
    e.g. CPU)."""
    peaks = []
    for d in jax.local_devices():
        try:
            peaks.append((d.memory_stats() or {}).get("peak_bytes_in_use", 0))
        except Exception:  # backends without memory statistics
            peaks.append(0)
    return max(peaks, default=0)


def matmul_precision(name: str):
    return contextlib.nullcontext() if name == "default" else jax.default_matmul_precision(name)


class Loop:
    """The shared training loop: jitted guarded step over the mesh, checkpoint/resume,
    progress, metrics and final samples. ``loss_fn(params, batch, key, step) -> (loss,
    metrics)``; ``sample_model_fn(params, x, t, carry) -> (eps, carry)`` with ``carry_init(x)``
    giving the sampler's initial carry (TBS students)."""

    def __init__(self, config, workdir: str, fm: Functional, params: dict, loss_fn, *,
                 sample_model_fn=None, carry_init=None):
        self.config, self.workdir, self.fm = config, workdir, fm
        tcfg = config.train
        self.mesh = parallel.make_data_mesh(config.mesh.data)
        parallel.check_batch(tcfg.batch_size, self.mesh)
        self.repl = parallel.replicated(self.mesh)
        self.opt = optim.make_optimizer(tcfg)
        self.flat = optim.Flat(params)
        self.unravel = jax.jit(self.flat.unravel, out_shardings=self.repl)
        self.ravel = jax.jit(self.flat.ravel, out_shardings=self.repl)
        self.state = place(optim.init_state(self.flat.ravel(params), self.opt, config.seed),
                           self.repl)
        self.mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.ckpt.max_to_keep,
                                       keep_period=config.ckpt.keep_period)
        latest = self.mngr.latest_step()
        if latest is not None:
            restored = checkpoint.restore(self.mngr, latest, self._named(self.state))
            self.state = {**restored, "params": self.ravel(restored["params"]),
                          "ema": self.ravel(restored["ema"])}
            logging.info("resumed from %s step %d", self.mngr.directory, latest)
        self.step_fn = jax.jit(
            lambda s, b: optim.guarded_update(s, loss_fn, b, self.opt, tcfg.ema_decay,
                                              self.flat.unravel),
            in_shardings=(self.repl, parallel.batch_sharded(self.mesh)),
            out_shardings=(self.repl, self.repl), donate_argnums=0)
        self.sample_fn = make_sampler(sample_model_fn or fp_model_fn(fm), config, carry_init)
        self.writer = logs.MetricWriter(workdir)

    @property
    def step(self) -> int:
        return int(np.asarray(self.state["step"].addressable_data(0)))

    def _named(self, state: dict) -> dict:
        """The checkpoint form of the state: named tensors instead of flat vectors."""
        return {**state, "params": self.unravel(state["params"]),
                "ema": self.unravel(state["ema"])}

    def params(self, ema: bool = True) -> dict:
        return self.unravel(self.state["ema" if ema else "params"])

    def save(self, wait: bool = False) -> None:
        checkpoint.save(self.mngr, self.step, self._named(self.state), wait=wait)

    def samples(self, num: int | None = None) -> np.ndarray:
        num = num or self.config.sample.grid_size
        params = self.params(ema=self.config.sample.use_ema)
        return generate(self.sample_fn, params, self.config, self.mesh, num=num,
                        seed=self.config.sample.seed)

    def run(self, source: BatchSource) -> dict:
        cfg, tcfg = self.config, self.config.train
        start = self.step
        prog = logs.Progress(tcfg.num_steps, start, tcfg.batch_size, tcfg.log_every)
        last = {}
        t_start = time.time()
        with matmul_precision(tcfg.matmul_precision):
            for step in range(start, tcfg.num_steps):
                batch = parallel.global_batch(source.local_batch(step), self.mesh)
                self.state, metrics = self.step_fn(self.state, batch)
                done = step + 1
                if prog.due(done):
                    last = {k: scalar(v) for k, v in metrics.items()}
                    last["nonfinite_total"] = scalar(self.state["nonfinite"])
                    rate = prog.rate(done)
                    prog.line(done, rate, {"loss": last["loss"],
                                           "skipped": last["nonfinite_total"]})
                    self.writer.scalars(done, {**last, "steps_per_sec": rate})
                if done % cfg.ckpt.save_every == 0 or done == tcfg.num_steps:
                    self.save()
                if tcfg.sample_every and done % tcfg.sample_every == 0:
                    self.writer.image(done, "samples", logs.image_grid(self.samples()))
        self.mngr.wait_until_finished()
        last["train_seconds"] = time.time() - t_start
        peak = peak_memory_bytes()
        if peak:
            last["peak_device_memory_gib"] = peak / 2**30
            logging.info("peak device memory %.2f GiB", peak / 2**30)
        return last

    def train_and_sample(self, source: BatchSource, tag: str) -> dict:
        """Runs to ``train.num_steps``, writes ``sample.num_samples`` images to
        ``samples/samples{tag}.npz`` (their first ``sample.grid_size`` as the grid), closes
        the loop (also on errors); returns the last logged metrics."""
        try:
            final = self.run(source)
            t0 = time.time()
            images = self.samples(self.config.sample.num_samples)
            final["sample_seconds"] = time.time() - t0
            final["num_samples"] = int(len(images))
            if jax.process_index() == 0:  # machine-readable end-of-run summary
                with open(os.path.join(self.workdir, "final.json"), "w") as f:
                    json.dump(final, f, indent=1, default=float)
            write_samples(os.path.join(self.workdir, "samples"), images,
                          self.config.sample.grid_size, tag=tag)
            self.writer.image(self.step, f"samples{tag}", logs.image_grid(images))
        finally:
            self.close()
        return final

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()
        self.writer.close()


def initial_params(config, fm: Functional) -> dict:
    """Fresh init, or the weights of ``ckpt.init_from`` (e.g. a converted official model)."""
    if not config.ckpt.init_from:
        return fm.params
    params = checkpoint.load_params(config.ckpt.init_from, use_ema=True)
    check_shapes(fm.shapes(), params, f"ckpt.init_from={config.ckpt.init_from}")
    return {k: np.asarray(v) for k, v in params.items()}


def run_train(config, workdir: str) -> dict:
    """``--mode train``: trains the FP UNet; writes checkpoints, logs and a final sample grid."""
    images = load_images(config.data)  # fail on missing data before building anything
    source = BatchSource(images, config.train.batch_size, config.seed, config.data.random_flip,
                         jax.process_index(), jax.process_count())
    fm = Functional(build_unet(config.model, rngs=nnx.Rngs(config.seed)))
    logging.info("model: %d parameters, %d devices, %d processes", sum(
        np.size(v) for v in fm.params.values()), jax.device_count(), jax.process_count())
    loop = Loop(config, workdir, fm, initial_params(config, fm), teacher_loss_fn(fm, config))
    return loop.train_and_sample(source, "_train")
