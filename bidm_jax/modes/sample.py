"""``--mode sample``: ``{workdir}/samples/samples{_tag}.npz`` (uint8 NHWC under ``arr_0``, the
ADM evaluator's format) and ``grid{_tag}.png`` (``sample.tag``: '' -> ``samples.npz``) from the
latest checkpoint of a teacher or a distilled student, or from a ``--mode export`` file
(``sample.packed``). A latent model's samples are decoded by its first stage batch by batch
inside the jitted sampler. Batches are written as they come and a killed run resumes
(:func:`bidm_jax.diffusion.sampling.generate_to_files`)."""
from __future__ import annotations

import os
import time

import jax
from absl import logging

from bidm_jax import build, export, first_stage, latent, parallel
from bidm_jax.diffusion.sampling import generate_to_files, make_sampler
from bidm_jax.models.functional import check_shapes
from bidm_jax.diffusion.sample_files import tag_suffix
from bidm_jax.training import checkpoint


def run_sample(config, workdir: str) -> str:
    """Loads the latest checkpoint of ``{workdir}/checkpoints`` (EMA weights unless
    sample.use_ema=False, plus the auxiliary state) and writes samples and a grid. With
    ``sample.packed`` ('auto' = ``{workdir}/export/packed.npz``, or a path) the student comes
    from a ``--mode export`` file and runs from its 1-bit weights (``export.kernel``;
    docs/export.md)."""
    first_stage.require(config, "sample")  # a latent model without its decoder: fail first
    mesh = parallel.make_data_mesh(config.mesh.data)
    if config.sample.packed:
        source = export.resolve_packed_path(config, workdir)
        fm, model_fn, carry_init, values = export.packed_sampling_model(config, source)
        values = jax.device_put(values, parallel.replicated(mesh))
    else:
        source = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(source):
            raise FileNotFoundError(f"no checkpoints under {source}; train first "
                                    "(--mode train or --mode distill)")
        fm, model_fn, carry_init = build.sampling_model(config)
        params, aux = checkpoint.load_params(source, use_ema=config.sample.use_ema,
                                             with_aux=True,
                                             sharding=parallel.replicated(mesh))
        check_shapes(fm.shapes(), params, f"checkpoint {source}")
        aux = build.sampling_aux(aux)
        if aux:
            check_shapes(fm.aux_shapes(), aux, f"checkpoint {source} [aux]")
        values = {**params, **aux}
    decode, decode_values = latent.sampling_decoder(config)  # latent models: decode to images
    if decode is not None:
        values = (values, jax.device_put(decode_values, parallel.replicated(mesh)))
    tag = config.sample.get("tag", "")
    tag_suffix(tag)  # a bad tag fails before any sampling
    t0 = time.time()
    sample_fn = make_sampler(model_fn, config, carry_init, decode=decode)
    path = generate_to_files(sample_fn, values, config, mesh, num=config.sample.num_samples,
                             seed=config.sample.seed, shape=build.input_shape(config),
                             directory=os.path.join(workdir, "samples"), tag=tag,
                             plan=_plan(config, source))
    logging.info("wrote %d samples of %s to %s in %.1fs", config.sample.num_samples, source,
                 path, time.time() - t0)
    return path


def _plan(config, source: str) -> dict:
    """What the samples of a resumed run must share with the batches already written: the
    model (checkpoint step or export file) and every sampler setting."""
    if config.sample.packed:
        stat = os.stat(source)
        model = f"packed {os.path.abspath(source)} ({stat.st_size} bytes, mtime {stat.st_mtime})"
    else:
        steps = [int(d) for d in os.listdir(source) if d.isdigit()]
        model = f"checkpoint step {max(steps) if steps else None} of {os.path.abspath(source)}"
    pick = lambda section, names: {k: section[k] for k in names if k in section}
    plan = {"model": model, "use_ema": bool(config.sample.use_ema),
            "sampler": pick(config.diffusion, _SAMPLER_FIELDS)}
    if "first_stage" in config:
        plan["first_stage"] = pick(config.first_stage, ("kind", "path", "scale_factor"))
    return plan


# The diffusion fields that decide what the sampler computes.
_SAMPLER_FIELDS = ("sampler", "sample_steps", "eta", "var_type", "clip_x0",
                   "timestep_convention", "schedule", "beta_start", "beta_end", "num_timesteps")
