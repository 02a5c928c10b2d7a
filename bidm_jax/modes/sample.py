"""``--mode sample``: ``{workdir}/samples/samples.npz`` (uint8 NHWC under ``arr_0``, the ADM
evaluator's format) and ``{workdir}/samples/grid.png`` from the latest checkpoint of a teacher
or a distilled student, or from a ``--mode export`` file (``sample.packed``). A latent model's
samples are decoded by its first stage batch by batch inside the jitted sampler."""
from __future__ import annotations

import os
import time

import jax
from absl import logging

from bidm_jax import build, export, first_stage, latent, parallel
from bidm_jax.diffusion.sampling import generate, make_sampler, write_samples
from bidm_jax.models.functional import check_shapes
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
    t0 = time.time()
    sample_fn = make_sampler(model_fn, config, carry_init, decode=decode)
    images = generate(sample_fn, values, config, mesh, num=config.sample.num_samples,
                      seed=config.sample.seed, shape=build.input_shape(config))
    path = write_samples(os.path.join(workdir, "samples"), images, config.sample.grid_size)
    logging.info("wrote %d samples of %s to %s in %.1fs", len(images), source, path,
                 time.time() - t0)
    return path
