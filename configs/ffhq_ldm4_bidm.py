"""BiDM W1A1 on LDM-4 FFHQ 256 (methods.md §2.8), distilled from the official LDM-4 FFHQ
model (``models/ldm/ffhq256/model.ckpt``, converted), with the bedrooms recipe
(configs/lsun_bedrooms_ldm4_bidm.py) on taming's FFHQTrain data: the short side resized to
256 (bilinear) and centre-cropped, no flips. lr: the paper's 2e-5; the released code's
effective value is base 2e-6 x batch 4 = 8e-6 (``scale_lr``): ``--config.distill.lr=8e-6``.

    python -m bidm_jax.convert.ldm --checkpoint models/ldm/ffhq256/model.ckpt \
        --out checkpoints/ffhq256
    python -m bidm_jax.main --config configs/ffhq_ldm4_bidm.py --workdir runs/ffhq_bidm \
        --config.data.path=data/ffhq/images1024x1024 \
        --config.data.file_list=data/ffhqtrain.txt
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "lsun_bedrooms_ldm4_bidm").get_config


def get_config():
    c = base()
    c.data.dataset = "ffhq"
    c.data.path = ""
    c.data.random_flip = False        # FFHQTrain has no flips
    c.data.interpolation = "bilinear"  # albumentations SmallestMaxSize (cv2 INTER_LINEAR)
    c.first_stage.path = "checkpoints/ffhq256/first_stage"
    c.distill.teacher = "checkpoints/ffhq256/unet"
    c.distill.lr = 2e-5
    return c
