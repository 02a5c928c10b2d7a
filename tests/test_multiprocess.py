"""Two processes on one machine (jax.distributed on localhost, CPU collectives), each feeding
its own half of every global batch, train a few steps; both must end with identical
parameters, equal to a single-process run on the whole batch."""
import os
import socket
import subprocess
import sys

import numpy as np

from bidm_jax import build
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.training.loop import Loop
from tests.conftest import ROOT, resolved, tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identically(tmp_path):
    port = free_port()
    worker = os.path.join(ROOT, "tests", "multiprocess_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(pid), str(port),
                               str(tmp_path / "run"), str(tmp_path / f"p{pid}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for pid in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    p0, p1 = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert set(p0.files) == set(p1.files) and len(p0.files) > 50
    for k in p0.files:
        np.testing.assert_array_equal(p0[k], p1[k])

    # The same 3 steps in this single process (8 devices) on the full global batches.
    cfg = tiny_config()
    cfg.train.num_steps = 3
    cfg.ckpt.save_every = 3
    cfg.train.adam_eps = 1e-2  # Adam's g/|g| would amplify reduction-order noise (test_train)
    cfg = resolved(cfg, "train")
    trainable = build.teacher_trainable(cfg)
    fm = trainable.fm
    loop = Loop(cfg, str(tmp_path / "single"), trainable)
    loop.run(BatchSource(load_images(cfg.data), cfg.train.batch_size, cfg.seed, True))
    single = loop.params(ema=False)
    loop.close()
    moved = 0.0
    for k in p0.files:
        np.testing.assert_allclose(p0[k], single[k], rtol=1e-4, atol=2e-6)
        moved += float(np.abs(p0[k] - fm.params[k]).sum())
    assert moved > 0
