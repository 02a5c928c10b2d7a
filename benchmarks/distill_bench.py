"""Milliseconds per distillation iteration (BiDM Table 9 style) on one device.

    python benchmarks/distill_bench.py --precisions float32,tensorfloat32 --out bench.jsonl

Each variant is one full optimizer step of ``--mode distill`` (the same ``loss_fn`` from
``bidm_jax.build.distill_trainable`` and the same ``optim.guarded_update`` as the
training loop: forward(s), backward, grad clip, Adam, EMA, non-finite guard) at the config's
batch size on random data; the teacher is a random-init FP UNet (timing does not depend on
its weights). Reported: median and min ms over ``--steps`` timed steps after ``--warmup``
steps (compile excluded). Variants:

* ``fp_teacher``   FP UNet, ε loss only (the teacher's own training step)
* ``xnor``         XNOR baseline = plain binary QAT: no cache pass, no teacher, no SPD
* ``bidm_k``       BiDM layers (learnable k), no TBS cross-step, no distillation
* ``bidm_tbs``     + cross-timestep connection (extra student pass at t+1)
* ``bidm_spd``     BiDM layers + SPD (teacher forward), no cross-step
* ``bidm_tbs_l2``  TBS + L2 feature distillation
* ``bidm``         full BiDM: TBS + SPD
* ``xnor_spd``     XNOR + SPD
* ``binarydm``     BinaryDM W1A4, paper mode: staged EBB, LSQ 4-bit, 8-bit edges, LRM
* ``binarydm_code`` BinaryDM W1A4, code mode: two bases kept, per-batch steps, progressive
* ``binarydm_baseline`` BinaryDM's Baseline W1A4 (single basis, LSQ 4-bit, no LRM)
* ``lsq_w2a4``     LSQ W2A4
* ``qdm``          Q-DM W4A4: LSQ 4-bit weights/activations, TaQ (batch_ema) on q/k, NeM
* ``qdm_unroll``   Q-DM with NeM unrolled over 4 DDIM steps (``distill.nem_unroll=4``)
* ``lsq_w4a4``     Q-DM's LSQ W4A4 baseline: the same layers without TaQ and NeM
* ``efficientdm``  EfficientDM W4A4: QALoRA weights, per-step TALSQ activations, one step on
  the teacher's DDIM trajectory (a new trajectory every 100 steps is not timed)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (quant.method, distill.tbs, distill.loss[, {section.field: value}])
VARIANTS = {
    "fp_teacher": ("fp", False, "none"),
    "xnor": ("xnor", False, "none"),
    "bidm_k": ("bidm", False, "none"),
    "bidm_tbs": ("bidm", True, "none"),
    "bidm_spd": ("bidm", False, "spd"),
    "bidm_tbs_l2": ("bidm", True, "l2"),
    "bidm": ("bidm", True, "spd"),
    "xnor_spd": ("xnor", False, "spd"),
    "binarydm": ("binarydm", False, "lrm"),
    "binarydm_code": ("binarydm", False, "lrm", {"distill.faithful_to": "code"}),
    "binarydm_baseline": ("binarydm_baseline", False, "none"),
    "lsq_w2a4": ("lsq", False, "none", {"quant.bits_w": 2}),
    "qdm": ("qdm", False, "nem"),
    "qdm_unroll": ("qdm", False, "nem", {"distill.nem_unroll": 4}),
    "lsq_w4a4": ("qdm", False, "none", {"quant.taq": "off"}),
    "efficientdm": ("efficientdm", False, "none", {"quant.bits_w": 4, "quant.bits_a": 4,
                                                   "quant.first_last_bits": 8,
                                                   "distill.data": "teacher_trajectory"}),
}


def bench_variant(config, name: str, precision: str, steps: int, warmup: int) -> dict:
    import jax
    import numpy as np

    from bidm_jax import build
    from bidm_jax.configlib import resolve_config
    from bidm_jax.training import optim
    from bidm_jax.training.loop import matmul_precision

    method, tbs, loss, *over = VARIANTS[name]
    c = config.copy_and_resolve_references()
    c.quant.method = method
    c.distill.tbs, c.distill.loss = tbs, loss
    for key, value in (over[0] if over else {}).items():
        section, field = key.split(".")
        c[section][field] = value
    c.train.matmul_precision = precision
    if c.model.name == "ldm_unet":
        # The step trains on latent batches directly (as from a latent cache of VQ-f4, whose
        # scale factor is 1): the frozen encoder's forward is not part of the timed step.
        c.first_stage.random_init, c.first_stage.path, c.first_stage.latents = True, "", ""
    c = resolve_config(c, "distill")
    teacher = build.fp_model(c).params  # random weights: a step's cost does not depend on them
    trainable, _ = build.distill_trainable(c, build.teacher(c), teacher)
    flat = optim.Flat(trainable.params)
    opt = optim.make_optimizer(c.train)
    state = optim.init_state(flat.ravel(trainable.params), opt, 0)
    if trainable.fm.aux:
        state["aux"] = dict(trainable.fm.aux)
    step = jax.jit(lambda s, b: optim.guarded_update(s, trainable.loss_fn, b, opt,
                                                     c.train.ema_decay, flat.unravel),
                   donate_argnums=0)
    shape = build.input_shape(c)
    r = shape[0]
    rng = np.random.default_rng(0)
    batches = [jax.device_put(rng.uniform(-1, 1, (c.train.batch_size,) + shape)
                              .astype(np.float32)) for _ in range(2)]
    times = []
    with matmul_precision(precision):
        t0 = time.perf_counter()
        state, m = step(state, batches[0])
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            state, m = step(state, batches[i % 2])
            jax.block_until_ready(state)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return {"variant": name, "method": method, "tbs": tbs, "loss": loss,
            "precision": precision, "batch": c.train.batch_size, "ch": c.model.ch,
            "resolution": r, "model": c.model.name, "ms_median": statistics.median(times), "ms_min": min(times),
            "steps": steps, "first_step_s": compile_s, "loss_value": float(m["loss"]),
            "device": str(jax.devices()[0].device_kind)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                    "cifar10_ddim.py"))
    p.add_argument("--variants", default="xnor,bidm,bidm_k,bidm_tbs,bidm_spd,fp_teacher")
    p.add_argument("--precisions", default="float32,tensorfloat32",
                   help="comma list of train.matmul_precision values")
    p.add_argument("--runs", default="",
                   help="explicit precision:variant list (overrides --variants/--precisions)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="8x8, ch 32 UNet (CPU smoke test)")
    p.add_argument("--out", default="", help="append one JSON line per result")
    a = p.parse_args(argv)

    from bidm_jax.configlib import sibling
    config = sibling(os.path.abspath(a.config), os.path.splitext(os.path.basename(a.config))[0])
    config = config.get_config()
    if a.tiny:
        config.model.resolution = 8
        config.model.ch, config.model.ch_mult = 32, (1, 2)
        config.model.num_res_blocks, config.model.attn_resolutions = 1, (4,)
        config.train.batch_size = 8
        if config.model.name == "ldm_unet":  # images of the first stage's 8x8 latents
            from bidm_jax.models.autoencoder import PRESETS
            config.data.image_size = 8 * PRESETS[config.first_stage.kind].factor
        else:
            config.data.image_size = 8
    if a.runs:
        runs = [tuple(r.split(":")) for r in a.runs.split(",")]
    else:
        runs = [(p_, v) for p_ in a.precisions.split(",") for v in a.variants.split(",")]
    results = []
    for precision, name in runs:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
        res = bench_variant(config, name, precision, a.steps, a.warmup)
        results.append(res)
        print(json.dumps(res), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(res) + "\n")
    return results


if __name__ == "__main__":
    main()
