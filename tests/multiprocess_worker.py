"""One process of the two-process training test (tests/test_multiprocess.py).

    python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR OUT_NPZ
"""
import os
import sys

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                           "--xla_backend_optimization_level=0")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(pid: int, port: int, workdir: str, out: str) -> None:
    from tests.conftest import tiny_config

    cfg = tiny_config()
    cfg.mesh.coordinator_address = f"127.0.0.1:{port}"
    cfg.mesh.num_processes = 2
    cfg.mesh.process_id = pid
    cfg.train.num_steps = 3
    cfg.ckpt.save_every = 3
    cfg.train.adam_eps = 1e-2  # Adam's g/|g| would amplify reduction-order noise (test_train)

    from bidm_jax.main import run

    run(cfg, workdir, "train")  # initializes jax.distributed itself

    import jax
    import numpy as np
    from bidm_jax import parallel
    from bidm_jax.training import checkpoint

    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = parallel.make_data_mesh(-1)
    params = checkpoint.load_params(os.path.join(workdir, "checkpoints"), use_ema=False,
                                    sharding=parallel.replicated(mesh))
    np.savez(out, **{k: np.asarray(v.addressable_data(0)) for k, v in params.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
