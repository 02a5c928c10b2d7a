"""The BiDM W1A1 student config (the project's advertised command runs it): BiDM distilled
from the DDIM CIFAR-10 teacher, with the BiDM paper's values (methods.md §2.8: Adam lr 6e-5,
λ_SPD 3e-2, TBS α_init 0.3, batch 64, grad clip 1.0, EMA 0.9999, 100k iterations; DDIM 100
steps, η = 0). The FP teacher's config is configs/cifar10_ddim_teacher.py.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/cifar10_bidm \
        --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz

The teacher directory comes from ``python -m bidm_jax.convert.ddim_cifar10`` (the official
``ema_cifar10`` model) or from ``--mode train`` with configs/cifar10_ddim_teacher.py.
Add ``--config.distill.faithful_to=code`` for the released code's values (lr 1e-4, λ 1e-2,
α_init 0.0); the TBS wiring is the code's up-level-1 topology either way
(``--config.distill.tbs_topology=paper`` for the paper's last-2-blocks).
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.mode = "distill"
    c.quant.method = "bidm"
    c.distill.teacher = "checkpoints/ddim_cifar10_ema"  # relative to the working directory
    c.distill.faithful_to = "paper"   # lr / λ / α_init left at None follow this switch
    c.train.batch_size = 64
    c.train.num_steps = 100_000
    c.train.warmup_steps = 0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.weight_decay = 0.0        # Adam (β 0.9/0.999, eps 1e-8)
    c.diffusion.sampler = "ddim"
    c.diffusion.sample_steps = 100
    c.diffusion.eta = 0.0
    c.ckpt.save_every = 5000
    c.ckpt.keep_period = 25_000
    return c
