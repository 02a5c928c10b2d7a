"""Shared tiny fixtures: a synthetic CIFAR-like dataset in the project's JPEG npz format."""
import io

import numpy as np
import pytest


def synthetic_images(n, seed):
    """uint8 (n, 32, 32, 3) images whose colour/stripe pattern depends on the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    yy = np.arange(32)[:, None]
    imgs = np.empty((n, 32, 32, 3), np.uint8)
    for i, c in enumerate(labels):
        base = np.array([25 * c, 255 - 25 * c, 120], np.float32)
        stripes = 60 * np.sin(yy * (c + 1) / 5.0)[..., None]
        img = base + stripes + rng.normal(0, 10, (32, 32, 3))
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
    return imgs, labels.astype(np.uint8)


def write_jpeg_npz(path, splits):
    from PIL import Image
    arrays = {}
    for split, (imgs, labels) in splits.items():
        bufs = []
        for im in imgs:
            b = io.BytesIO()
            Image.fromarray(im).save(b, format="JPEG", quality=75)
            bufs.append(np.frombuffer(b.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(bufs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in bufs]).astype(np.int64)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny_cifar_jpeg_q75.npz"
    train = synthetic_images(80, 0)
    test = synthetic_images(40, 1)
    write_jpeg_npz(str(path), {"train": train, "test": test})
    return str(path), train, test


def make_config(data_path, **eval_kw):
    """Project-shaped config (seed, data, eval) with a tiny proxy network and tiny metrics."""
    import ml_collections

    from bidm_jax.metrics.config import get_eval_config

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict({"path": data_path, "source": "auto"})
    c.eval = get_eval_config()
    c.eval.update(dict(features="proxy", num_samples=0, batch_size=16, pr_num_images=40,
                       pr_block=32, kid_subsets=2, kid_subset_size=20, is_split_size=16,
                       proxy_width=4, proxy_embed_dim=16, proxy_spatial_channels=2,
                       proxy_steps=3, proxy_batch_size=16, proxy_warmup_steps=1,
                       proxy_log_every=1))
    c.eval.update(eval_kw)
    return c


@pytest.fixture(scope="session")
def proxy_workdir(tiny_cifar, tmp_path_factory):
    """A workdir holding a proxy network trained 3 steps by ``run_train_proxy``."""
    from bidm_jax.metrics.evaluate import run_train_proxy

    wd = str(tmp_path_factory.mktemp("run"))
    summary = run_train_proxy(make_config(tiny_cifar[0]), wd)
    return wd, summary
