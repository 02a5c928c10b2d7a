"""Full-precision DDIM CIFAR-10 teacher (methods.md §1.1, DDPM recipe §4.2 item 11).

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher \
        --config.data.path=/path/to/cifar-10-python.tar.gz

The architecture is the ermongroup/pesser UNet (35,746,307 parameters); Adam lr 2e-4 with
5,000 warm-up steps, batch 128, grad clip 1.0, dropout 0.1, EMA 0.9999, random flips.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.train.batch_size = 128
    c.train.lr = 2e-4
    c.train.warmup_steps = 5000
    c.train.num_steps = 800_000
    c.sample.num_samples = 64
    return c
