"""What the low-bit method tests share: a paper config with ``quant`` overrides, the layer
specs a config builds, and a tiny distillation interrupted and resumed."""
import os

import jax
import numpy as np
from flax import nnx

from bidm_jax import build
from bidm_jax.configlib import sibling
from bidm_jax.main import run
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional
from bidm_jax.training import checkpoint
from bidm_jax.training.loop import Loop
from tests.conftest import ROOT, resolved


def paper_config(name: str, distill: dict | None = None, **quant):
    """``configs/{name}.py`` with ``distill`` and ``quant`` fields overridden, resolved for
    distillation."""
    c = sibling(os.path.join(ROOT, "configs", "x.py"), name).get_config()
    for k, v in (distill or {}).items():
        c.distill[k] = v
    for k, v in quant.items():
        c.quant[k] = v
    return resolved(c)


def layer_specs(config) -> dict:
    """path -> LayerSpec of every layer the config's factory builds (abstractly)."""
    f = build.factory(config)
    nnx.eval_shape(lambda: build_unet(config.model, rngs=nnx.Rngs(0), factory=f))
    return f.specs


def interrupted_distill(tmp_path_factory, mp, make_config, name: str):
    """A random-init teacher, then ``make_config(teacher, **overrides)`` distilled for 2 steps
    and resumed to its own ``train.num_steps``. Returns (workdir, final metrics, started):
    ``started`` holds the state the resumed run starts from after its calibration hook
    (``params``, ``aux``, ``resumed``), which must be the checkpoint's."""
    assert jax.device_count() == 8
    teacher = str(tmp_path_factory.mktemp("teacher") / "checkpoints")
    fm = Functional(build_unet(make_config("").model, rngs=nnx.Rngs(0)))
    checkpoint.write_params(teacher, {k: np.asarray(v) for k, v in fm.params.items()})
    work = str(tmp_path_factory.mktemp(name))
    run(make_config(teacher, **{"train.num_steps": 2}), work, "distill")
    started = {}
    calibrate = Loop.calibrate

    def spy(self, source):
        calibrate(self, source)
        # To the host now: the training steps donate the state's buffers.
        started.update(jax.device_get({"params": self.params(ema=False),
                                       "aux": dict(self.state["aux"])}),
                       resumed=self.resumed)

    mp.setattr(Loop, "calibrate", spy)
    final = run(make_config(teacher), work, "distill")
    return work, final, started


def assert_packed_samples_match(config, work: str) -> None:
    """``--mode sample`` through the packed export reproduces the end-of-training fake-quant
    images: all but at most one, since a 4-bit rounding-boundary flip may change an image of
    an untrained model over a sampling run."""
    config.sample.packed = "auto"
    run(config, work, "sample")
    load = lambda f: np.load(os.path.join(work, "samples", f))["arr_0"].astype(int)
    a, b = load("samples.npz"), load("samples_distill.npz")
    same = [np.array_equal(a[i], b[i]) for i in range(len(a))]
    assert sum(same) >= len(a) - 1, same
