"""The latent pipeline (docs/ldm.md): L1/L2 ε losses, the LDM image preprocessing and lazy
image folders, latent caches (round trip, refusal of a mismatched or partial cache), config
validation of a latent model, LDM's warm-up and EMA schedules, and one tiny end-to-end run
through the command line: teacher training on latents encoded in the step, encode_latents,
BiDM distillation from the cache, samples decoded to uint8 images."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bidm_jax import errors, first_stage
from bidm_jax.configlib import resolve_config, sibling
from bidm_jax.data import images as image_files
from bidm_jax.data import latents as cache_lib
from bidm_jax.data.pipeline import BatchSource
from bidm_jax.diffusion.losses import eps_loss
from bidm_jax.training import optim
from tests.conftest import ROOT

latent_config = sibling(os.path.join(ROOT, "tests", "latent_config.py"),
                        "latent_config").get_config


def test_l1_and_l2_losses_are_per_pixel_means_as_ldm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(eps_loss(a, b, "mean", "l1"), np.abs(a - b).mean(), rtol=1e-6)
    np.testing.assert_allclose(eps_loss(a, b, "mean", "l2"), ((a - b) ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(eps_loss(a, b, "sum", "l1"),
                               np.abs(a - b).reshape(3, -1).sum(1).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        eps_loss(a, b, "mean", "huber")


def _write_images(folder, count=6, size=(20, 14), seed=0):
    """PNG files of random RGB images (W, H) = ``size``; returns their arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(count):
        a = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(a).save(os.path.join(folder, f"img{i:02d}.png"))
        arrays.append(a)
    return arrays


def test_image_folder_crops_resizes_as_ldm_and_names_a_bad_file(tmp_path):
    arrays = _write_images(tmp_path / "imgs", count=3, size=(20, 14))
    folder = image_files.ImageFolder(str(tmp_path / "imgs"), 8, workers=2)
    got = folder.take([2, 0])
    for out, a in zip(got, [arrays[2], arrays[0]]):
        # LSUNBase: the centred 14x14 square (columns 3..17), then PIL bicubic to 8x8
        ref = np.asarray(Image.fromarray(a[:, 3:17]).resize((8, 8), Image.BICUBIC))
        np.testing.assert_array_equal(out, ref)
    assert got.dtype == np.uint8 and got.shape == (2, 8, 8, 3)
    # a file list picks and orders the images
    (tmp_path / "list.txt").write_text("img01.png\nimg00.png\n")
    listed = image_files.ImageFolder(str(tmp_path / "imgs"), 8,
                                     file_list=str(tmp_path / "list.txt"))
    np.testing.assert_array_equal(listed.take([1]), got[1:])
    (tmp_path / "imgs" / "img01.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(errors.CorruptFile, match="img01.png"):
        folder.take([1])
    with pytest.raises(FileNotFoundError, match="LSUN tools"):
        image_files.ImageFolder(str(tmp_path / "missing"), 8, dataset="lsun_bedrooms")


def test_lazy_source_batches_equal_the_in_memory_ones(tmp_path):
    """BatchSource's contract holds for a lazy folder: the same indices and flips as the
    in-memory array, and two processes' slices make the global batch."""
    _write_images(tmp_path / "imgs", count=7, size=(9, 9))
    folder = image_files.ImageFolder(str(tmp_path / "imgs"), 9, workers=1)
    memory = folder.take(np.arange(7))
    for step in (0, 1, 5):
        a = BatchSource(memory, 4, 3, True).local_batch(step)
        b = BatchSource(folder, 4, 3, True).local_batch(step)
        halves = [BatchSource(folder, 4, 3, True, p, 2).local_batch(step) for p in (0, 1)]
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.concatenate(halves), a)


def _tiny_kl_config():
    c = latent_config()
    c.first_stage.kind = "kl-f8"
    c.first_stage.n_embed = 0
    c.model.in_channels = c.model.out_ch = 4
    c.first_stage.scale_factor = 0.5
    return c


def test_kl_latents_from_moments_are_the_autoencoders():
    """KL: latents = scale · (mean + exp(logvar/2)·ε) from the moments a cache stores, the
    autoencoder's ``encode_latent`` with the same key (VQ's scale · h is the e2e test's)."""
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    key = jax.random.key(3)
    fs = first_stage.load(_tiny_kl_config())
    z = fs.encode(fs.values, x, key)
    assert z.shape == (2, 8, 8, 4) and fs.moment_channels == 8
    np.testing.assert_allclose(z, fs.fm.module(fs.values).encode_latent(x, key),
                               rtol=1e-5, atol=1e-5)


def test_latent_cache_round_trip_and_refusals(tmp_path):
    config = latent_config()
    fs = first_stage.load(config)
    meta = cache_lib.describe(config, fs, 5)
    assert meta["shape"] == [5, 2, 8, 8, 3] and meta["stored"] == "pre_quant"
    values = np.random.default_rng(0).normal(size=meta["shape"]).astype(np.float16)
    d = str(tmp_path / "cache")
    array = cache_lib.create(d, meta)
    array[:] = values
    array.flush()
    with pytest.raises(ValueError, match="incomplete"):
        cache_lib.LatentCache.open(d)
    cache_lib.write_meta(d, dict(meta, done=5, complete=True))
    cache = cache_lib.LatentCache.open(d, cache_lib.describe(config, fs, 0))
    got = cache.batch([4, 1, 2], [True, False, True])
    np.testing.assert_array_equal(got, values[[4, 1, 2], [1, 0, 1]].astype(np.float32))
    other = dict(cache_lib.describe(config, fs, 0), first_stage_sha256="another")
    with pytest.raises(ValueError, match="first_stage_sha256"):
        cache_lib.LatentCache.open(d, other)
    config.data.image_size = 32
    with pytest.raises(ValueError, match="image_size"):
        cache_lib.LatentCache.open(d, cache_lib.describe(config, fs, 0))


def test_latent_config_validation_names_the_mismatch():
    c = latent_config()
    c.data.image_size = 16  # -> 16x16 latents for an 8x8 UNet
    with pytest.raises(ValueError, match="16, 16, 3.*latents.*model.resolution=8"):
        resolve_config(c, "train")
    c = latent_config()
    c.first_stage.random_init = False
    with pytest.raises(ValueError, match="random_init"):  # overrides need random weights
        resolve_config(c, "train")
    c = latent_config()
    c.first_stage.kind = ""
    c.first_stage.random_init = False
    for f in ("ch", "ch_mult", "num_res_blocks", "n_embed"):
        c.first_stage[f] = () if f == "ch_mult" else 0
    with pytest.raises(ValueError, match="works on latents"):
        first_stage.require(resolve_config(c, "train"), "train")
    c = latent_config()
    c.diffusion.loss_type = "l1"
    c.distill.loss = "nem"
    with pytest.raises(ValueError, match="loss_type"):
        resolve_config(c, "distill")


def test_ldm_warmup_and_litema_decay():
    c = latent_config().train
    c.lr, c.warmup_steps, c.warmup_start, c.num_steps = 1.0, 10, 1e-6, 100
    opt = optim.make_optimizer(c)
    f = lambda s: 1e-6 + (1 - 1e-6) * s / 10 if s < 10 else 1.0
    # the schedule optax sees: one Adam step of a unit gradient moves by ~lr(s)
    state = opt.init(jnp.zeros(1))
    moves = []
    for _ in range(12):
        upd, state = opt.update(jnp.ones(1), state, jnp.zeros(1))
        moves.append(-float(upd[0]))
    np.testing.assert_allclose(moves, [f(s) for s in range(12)], rtol=1e-4)
    decay = [float(optim.ema_decay_at(0.9999, jnp.int32(s), True)) for s in (0, 1, 10**6)]
    np.testing.assert_allclose(decay, [2 / 11, 3 / 12, 0.9999], rtol=1e-6)


def test_tiny_latent_run_end_to_end(tmp_path, capsys):
    """Teacher training on latents encoded in the step, the data encoded once, BiDM
    distilled from the cache (TBS + SPD), the samples decoded to uint8 256-level images."""
    from bidm_jax.main import cli

    images = str(tmp_path / "imgs")
    _write_images(images, count=8, size=(20, 16))
    cfg = os.path.join(ROOT, "tests", "latent_config.py")
    common = ["--config", cfg, f"--config.data.path={images}"]
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    cache = str(tmp_path / "latents")

    assert cli(["prog", *common, "--workdir", teacher, "--mode", "train"]) == 0
    samples = np.load(os.path.join(teacher, "samples", "samples_train.npz"))["arr_0"]
    assert samples.dtype == np.uint8 and samples.shape == (4, 8, 8, 3)

    assert cli(["prog", *common, "--workdir", teacher, "--mode", "encode_latents",
                f"--config.first_stage.latents={cache}"]) == 0
    meta = json.load(open(os.path.join(cache, "meta.json")))
    assert meta["complete"] and meta["shape"] == [8, 2, 8, 8, 3]

    args = [*common, "--workdir", student, "--mode", "distill",
            "--config.quant.method=bidm", f"--config.first_stage.latents={cache}",
            f"--config.distill.teacher={os.path.join(teacher, 'checkpoints')}"]
    assert cli(["prog", *args]) == 0
    info = json.load(open(os.path.join(student, "distill.json")))
    assert info["first_stage"]["latents"] == cache and info["tbs"]
    out = np.load(os.path.join(student, "samples", "samples_distill.npz"))["arr_0"]
    assert out.dtype == np.uint8 and out.shape == (4, 8, 8, 3)
    assert os.path.isfile(os.path.join(student, "samples", "grid_distill.png"))

    # a cache of another first stage is refused, naming the field
    capsys.readouterr()
    assert cli(["prog", *args, "--workdir", str(tmp_path / "other"),
                "--config.first_stage.n_embed=32"]) == 2
    assert "first_stage_sha256" in capsys.readouterr().err
