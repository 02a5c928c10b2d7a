"""The shared training loop of teacher training and distillation.

``Loop(config, workdir, trainable)`` runs a jitted guarded step over the ``data`` mesh
(parameters, EMA and Adam moments as flat vectors, the model's auxiliary state as named
tensors), checkpoints and resumes it, logs progress and metrics, and samples at the end.
A :class:`~bidm_jax.build.Trainable` (from :mod:`bidm_jax.build`) says what is trained:

    loss_fn(params, aux, x0, key, step) -> (loss, (metrics, aux))
    sample_model_fn(values, x, t, carry) -> (eps, carry),  carry_init(x_T) -> carry
    calibrate_fn(params, aux, x0, key) -> (params, aux)     (None: no calibration)

A fresh run with a ``calibrate_fn`` calibrates once on the first training batch before the
first step; a resumed run restores the calibrated values from its checkpoint instead.

A latent model's trainable also has ``prepare(frozen, batch, key) -> x0`` (the first stage's
encoding, :mod:`bidm_jax.latent`), applied inside the jitted step and the calibration with the
frozen values as arguments, and ``decode`` for the samples.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from bidm_jax import logs, parallel, saved_config
from bidm_jax.errors import TrainingDiverged
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.diffusion.sampling import generate, make_sampler, write_samples
from bidm_jax.training import checkpoint, optim

CALIBRATION_FOLD = 0x7ca1  # the calibration key: fold_in(seed key, this), apart from steps
ENCODE_FOLD = 0x1a7e       # a latent model's encoding key: fold_in(step key, this)


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


def batch_source(config) -> BatchSource:
    """This process's batches of ``data`` (loading fails early on missing data)."""
    images = load_images(config.data)
    return BatchSource(images, config.train.batch_size, config.seed, config.data.random_flip,
                       jax.process_index(), jax.process_count())


class Loop:
    """Trains ``trainable`` under ``config.train`` in ``workdir`` (see the module docstring)."""

    def __init__(self, config, workdir: str, trainable):
        self.config, self.workdir, self.trainable = config, workdir, trainable
        fm, tcfg = trainable.fm, config.train
        self.fm = fm
        self.mesh = parallel.make_data_mesh(config.mesh.data)
        parallel.check_batch(tcfg.batch_size, self.mesh)
        self.repl = parallel.replicated(self.mesh)
        self.flat = optim.Flat(trainable.params)
        self.opt = optim.make_optimizer(tcfg, self.flat.multipliers(trainable.lr_multipliers))
        self.unravel = jax.jit(self.flat.unravel, out_shardings=self.repl)
        self.ravel = jax.jit(self.flat.ravel, out_shardings=self.repl)
        state = optim.init_state(self.flat.ravel(trainable.params), self.opt, config.seed)
        if fm.aux:
            state["aux"] = dict(fm.aux)
        self.state = parallel.place(state, self.repl)
        # This run holds the workdir's lock: partial step directories a killed run left are
        # its own to remove.
        self.mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.ckpt.max_to_keep,
                                       keep_period=config.ckpt.keep_period, cleanup=True)
        self.resumed = self._restore()
        # A latent model's frozen first stage: replicated once, then an argument of every
        # step (not a constant folded into the program).
        self.frozen = parallel.place(trainable.frozen or {}, self.repl)
        ema_warmup = bool(tcfg.get("ema_warmup", False))
        self.step_fn = jax.jit(
            lambda s, b, fz: optim.guarded_update(s, self._loss_on_batch(fz), b, self.opt,
                                                  tcfg.ema_decay, self.flat.unravel,
                                                  ema_warmup=ema_warmup),
            in_shardings=(self.repl, parallel.batch_sharded(self.mesh), self.repl),
            out_shardings=(self.repl, self.repl), donate_argnums=0)
        self.sample_fn = make_sampler(trainable.sample_model_fn, config, trainable.carry_init,
                                      decode=trainable.decode)
        self.decode_values = (parallel.place(trainable.decode_values, self.repl)
                              if trainable.decode is not None else None)
        self.writer = logs.MetricWriter(workdir, keep_until=self.step)

    def _prepare(self, frozen, batch, key):
        """The model's input x0 from a data batch (latent models: encoded by the frozen
        first stage, with a key apart from the loss's)."""
        prepare = self.trainable.prepare
        if prepare is None:
            return batch
        return prepare(frozen, batch, jax.random.fold_in(key, ENCODE_FOLD))

    def _loss_on_batch(self, frozen):
        loss_fn = self.trainable.loss_fn
        if self.trainable.prepare is None:
            return loss_fn
        return lambda p, a, b, key, step: loss_fn(p, a, self._prepare(frozen, b, key), key,
                                                  step)

    def _restore(self) -> bool:
        latest = self.mngr.latest_step()
        if latest is None:
            return False
        target = self._named(self.state)
        if "aux" in target and not checkpoint.has_entry(self.mngr, latest, "aux"):
            # Written before the model had auxiliary state: keep its initial values.
            logging.warning("checkpoint step %d has no auxiliary state; starting it from its "
                            "initial values", latest)
            target.pop("aux")
        if not checkpoint.has_entry(self.mngr, latest, "nonfinite_streak"):
            target.pop("nonfinite_streak")  # written before the streak was kept: start at 0
        restored = checkpoint.restore(self.mngr, latest, target)
        self.state = {**self.state, **restored, "params": self.ravel(restored["params"]),
                      "ema": self.ravel(restored["ema"])}
        logging.info("resumed from %s step %d", self.mngr.directory, latest)
        return True

    @property
    def step(self) -> int:
        return int(np.asarray(self.state["step"].addressable_data(0)))

    def _named(self, state: dict) -> dict:
        """The checkpoint form of the state: named tensors instead of flat vectors."""
        return {**state, "params": self.unravel(state["params"]),
                "ema": self.unravel(state["ema"])}

    def params(self, ema: bool = True) -> dict:
        return self.unravel(self.state["ema" if ema else "params"])

    def values(self, ema: bool = True) -> dict:
        """Parameters and auxiliary state in one flat dict: what sampling reads."""
        return {**self.params(ema), **self.state.get("aux", {})}

    def save(self, wait: bool = True) -> None:
        """Checkpoints the state and waits for the write (a failed save stops the run here,
        naming the checkpoint; the previous ones are kept)."""
        checkpoint.save(self.mngr, self.step, self._named(self.state), wait=wait)

    def calibrate(self, source: BatchSource) -> None:
        """The method's calibration on the first training batch (fresh runs only): sets the
        calibrated parameters (EMA included) and auxiliary state."""
        fn = self.trainable.calibrate_fn
        if fn is None or self.resumed:
            return
        batch = parallel.global_batch(source.local_batch(0), self.mesh)
        key = jax.random.fold_in(jax.random.key(self.config.seed), CALIBRATION_FOLD)
        params, aux = jax.jit(
            lambda p, a, b, k, fz: fn(p, a, self._prepare(fz, b, k), k),
            out_shardings=(self.repl, self.repl))(
            self.params(ema=False), self.state.get("aux", {}), batch, key, self.frozen)
        # Two buffers: the step donates the state, and one buffer must not be donated twice.
        self.state = {**self.state, "params": self.ravel(params), "ema": self.ravel(params)}
        if "aux" in self.state:
            self.state["aux"] = aux
        logging.info("calibrated on %d images", int(batch.shape[0]))

    def samples(self, num: int | None = None) -> np.ndarray:
        num = num or self.config.sample.grid_size
        values = self.values(ema=self.config.sample.use_ema)
        if self.decode_values is not None:
            values = (values, self.decode_values)
        return generate(self.sample_fn, values, self.config, self.mesh, num=num,
                        seed=self.config.sample.seed, shape=self.trainable.input_shape)

    def _check_divergence(self, done: int, metrics: dict | None = None) -> None:
        """Raises :class:`~bidm_jax.errors.TrainingDiverged` after ``max_nonfinite_streak``
        consecutive non-finite updates, or when the final step's loss is non-finite
        (``metrics`` given). Nothing is saved: the last checkpoint holds the last good state."""
        limit = int(self.config.train.max_nonfinite_streak)
        streak = int(scalar(self.state["nonfinite_streak"]))
        last = self.mngr.latest_step()
        keep = (f"the last checkpoint (step {last}) is kept" if last is not None
                else "no checkpoint was written")
        if limit and streak >= limit:
            raise TrainingDiverged(
                f"training diverged: the last {streak} updates (to step {done}) were non-finite "
                f"(train.max_nonfinite_streak={limit}); {keep} and no samples are written. "
                f"Lower train.lr (now {self.config.train.lr:g}) or check the data")
        if metrics is not None and not np.isfinite(scalar(metrics["loss"])):
            raise TrainingDiverged(
                f"training ended with a non-finite loss at step {done}; {keep} and no samples "
                f"are written. Lower train.lr (now {self.config.train.lr:g}) or check the data")

    def run(self, source: BatchSource) -> dict:
        cfg, tcfg = self.config, self.config.train
        self.calibrate(source)
        # How often the streak is read back (a host sync): often enough to stop within a
        # few steps of the limit, rarely enough to keep the device busy.
        check = max(1, min(int(tcfg.log_every), 10, int(tcfg.max_nonfinite_streak) or 10))
        start = self.step
        prog = logs.Progress(tcfg.num_steps, start, tcfg.batch_size, tcfg.log_every)
        last = {}
        t_start = time.time()
        with matmul_precision(tcfg.matmul_precision):
            for step in range(start, tcfg.num_steps):
                batch = parallel.global_batch(source.local_batch(step), self.mesh)
                self.state, metrics = self.step_fn(self.state, batch, self.frozen)
                done = step + 1
                if done % check == 0 or done == tcfg.num_steps:
                    self._check_divergence(done, metrics if done == tcfg.num_steps else None)
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

    def train_and_sample(self, source: BatchSource) -> dict:
        """Runs to ``train.num_steps``, writes ``sample.num_samples`` images to
        ``samples/samples{tag}.npz`` (their first ``sample.grid_size`` as the grid), closes
        the loop (also on errors); returns the last logged metrics."""
        tag = self.trainable.tag
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
        except BaseException:
            self.close(quiet=True)  # the error being raised is the one to report
            raise
        self.close()
        return final

    def close(self, quiet: bool = False) -> None:
        """Waits for pending checkpoint writes and closes the files. ``quiet``: on the way
        out of an error, a pending write's own failure (already reported) is not raised
        again."""
        try:
            self.mngr.wait_until_finished()
            self.mngr.close()
        except Exception:
            if not quiet:
                raise
        finally:
            self.writer.close()


def fit(config, workdir: str, trainable, source: BatchSource, mode: str | None = None) -> dict:
    """Resumes or starts the loop, then writes the trainable's description
    (``{workdir}/{info_file}``) and, with ``mode`` (the mode that trains), the resolved config
    the workdir remembers (``{workdir}/config.json``, :mod:`bidm_jax.saved_config`); trains,
    samples; returns the last logged metrics. Nothing is written before the checkpoint is
    restored, so a run that fails to resume leaves the workdir as it was."""
    loop = Loop(config, workdir, trainable)
    try:
        if mode is not None:
            saved_config.save(workdir, config, mode)
        if trainable.info_file:
            logging.info("%s: %s", trainable.info_file, json.dumps(trainable.info))
            if jax.process_index() == 0:
                with open(os.path.join(workdir, trainable.info_file), "w") as f:
                    json.dump(trainable.info, f, indent=1)
    except BaseException:
        loop.close(quiet=True)
        raise
    return loop.train_and_sample(source)
