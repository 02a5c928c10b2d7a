"""The quickstart's pieces that need no training: grey digits end to end through the data
pipeline, the digits score of grey and RGB samples, the side-by-side PNG of one channel, the
channel checks of the config, and the printed results table."""
import os

import numpy as np
import pytest
from PIL import Image

from bidm_jax import logs
from bidm_jax.configlib import sibling, validate_config
from bidm_jax.data.digits import load_digits_images, load_digits_rgb
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.modes import quickstart
from tests.tiny import ROOT, tiny_config


def quickstart_config():
    return sibling(os.path.join(ROOT, "configs", "quickstart.py"), "quickstart").get_config()


def test_quickstart_models_the_grey_channel():
    c = quickstart_config()
    validate_config(c)
    assert c.data.channels == c.model.in_channels == c.model.out_ch == 1
    images = load_images(c.data)
    assert images.shape == (1797, c.data.image_size, c.data.image_size, 1)
    batch = BatchSource(images, 8, 0, False).local_batch(0)
    assert batch.shape[-1] == 1 and -1 <= batch.min() < batch.max() <= 1
    # the grey images are the RGB ones' common channel
    np.testing.assert_array_equal(images[..., 0], load_digits_rgb(c.data.image_size)[0][..., 1])


@pytest.mark.parametrize("field,value,message", [
    ("data.channels", 2, "data.channels=2 is invalid"),
    ("model.in_channels", 3, "data.channels=1 channels; got model.in_channels=3"),
    ("model.out_ch", 3, "model.out_ch=3"),
])
def test_channel_mismatch_fails_at_start_up(field, value, message):
    c = quickstart_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(c)


def test_grey_only_for_the_digits():
    c = tiny_config(**{"data.dataset": "cifar10", "data.image_size": 32,
                       "model.resolution": 32, "data.channels": 1})
    with pytest.raises(ValueError, match="data.channels=1 is invalid"):
        validate_config(c)
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        load_digits_images(8, 2)


def test_digits_features_are_the_same_for_grey_and_rgb(tmp_path):
    # (the classifier itself takes seconds to fit: the features it reads are compared)
    for size in (8, 16):
        grey, rgb = load_digits_images(size, 1)[0][:50], load_digits_rgb(size)[0][:50]
        feats = quickstart.to_digits_features(grey)
        np.testing.assert_array_equal(feats, quickstart.to_digits_features(rgb))
        assert feats.shape == (50, 64) and 0 <= feats.min() < feats.max() <= 16
    # IS: 10 equally likely, confidently told classes -> 10; one class -> 1
    assert quickstart.inception_score(np.eye(10)[np.arange(100) % 10]) > 9.99
    assert quickstart.inception_score(np.eye(10)[np.zeros(100, int)]) < 1.001

    pair = quickstart.side_by_side(logs.image_grid(grey[:9]), logs.image_grid(grey[:4]))
    assert pair.shape[-1] == 1
    logs.save_png(str(tmp_path / "pair.png"), pair, upscale=2)
    png = Image.open(tmp_path / "pair.png")
    assert png.mode == "L" and png.size == (pair.shape[1] * 2, pair.shape[0] * 2)


def test_results_table_names_both_models():
    score = {"digits_is": 7.5, "digits_confidence": 0.9}
    text = quickstart.results_table({
        "real_data": score, "teacher": score, "student": score, "teacher_steps": 10,
        "student_steps": 5, "train_seconds": 3.0, "student_seconds": 2.0,
        "student_method": "bidm W1A1", "num_samples": 64, "total_seconds": 9.0})
    assert "FP teacher" in text and "bidm W1A1 student" in text and "7.50" in text
