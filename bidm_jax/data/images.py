"""Image datasets read lazily, one file at a time: image folders with the LDM preprocessing,
LSUN bedrooms / church_outdoor and FFHQ (docs/ldm.md).

Preprocessing (CompVis ``ldm/data/lsun.py`` LSUNBase): RGB, centre crop to the short side
(``img[(h - c)//2:(h + c)//2, (w - c)//2:(w + c)//2]`` with c = min(h, w)), resize to
``data.image_size`` with PIL's bicubic filter, and horizontal flips with p = 0.5 (done by
:class:`bidm_jax.data.pipeline.BatchSource`, so the flips stay a function of the data seed
and the step). taming's FFHQTrain (the FFHQ LDM's data) rescales the short side to the size
with OpenCV's bilinear filter and centre-crops, without flips: ``data.interpolation=bilinear``
and ``data.random_flip=False`` (PIL's bilinear filter antialiases a downscale, OpenCV's does
not: close, not bit-identical).

A source is indexable: ``len(source)`` images, ``source.take(indices)`` -> uint8
(B, S, S, 3). A file that does not decode raises :class:`bidm_jax.errors.CorruptFile`
naming it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bidm_jax import errors

DATASETS = ("image_folder", "lsun_bedrooms", "lsun_churches", "ffhq")
SOURCES = ("auto", "folder", "tfds")
INTERPOLATIONS = ("bicubic", "bilinear", "lanczos", "nearest")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# tensorflow-datasets builders (FFHQ has none in the tfds catalog)
TFDS_NAMES = {"lsun_bedrooms": "lsun/bedroom", "lsun_churches": "lsun/church_outdoor"}

HOW_TO_GET = {
    "lsun_bedrooms": (
        "LSUN bedrooms was not found. Get it in one of these ways:\n"
        "  * the LSUN tools (github.com/fyu/lsun): `python download.py -c bedroom`, then\n"
        "    `python data.py export bedroom_train_lmdb --out_dir data/lsun/bedrooms --flat`,\n"
        "    and pass --config.data.path=data/lsun/bedrooms (optionally\n"
        "    --config.data.file_list=data/lsun/bedrooms_train.txt, CompVis's split list);\n"
        "  * or tensorflow-datasets (pip install tensorflow-datasets) with a prepared\n"
        "    'lsun/bedroom' build in array_record format under data.path, and\n"
        "    --config.data.source=tfds."),
    "lsun_churches": (
        "LSUN church_outdoor was not found. Get it in one of these ways:\n"
        "  * the LSUN tools (github.com/fyu/lsun): `python download.py -c church_outdoor`,\n"
        "    then `python data.py export church_outdoor_train_lmdb --out_dir\n"
        "    data/lsun/churches --flat`, and pass --config.data.path=data/lsun/churches\n"
        "    (optionally --config.data.file_list=data/lsun/church_outdoor_train.txt);\n"
        "  * or tensorflow-datasets with a prepared 'lsun/church_outdoor' build in\n"
        "    array_record format under data.path, and --config.data.source=tfds."),
    "ffhq": (
        "FFHQ was not found. Download the images (github.com/NVlabs/ffhq-dataset:\n"
        "`python download_ffhq.py --images`, 70,000 PNGs at 1024x1024) and pass\n"
        "--config.data.path=<the images1024x1024 folder> (optionally\n"
        "--config.data.file_list=<taming's ffhqtrain.txt>, its 60,000-image train split)."),
    "image_folder": "Pass --config.data.path=<a folder of images (searched recursively)>.",
}


def _filter(name: str):
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
            "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}[name]


def center_crop(img: np.ndarray) -> np.ndarray:
    """(H, W, C) -> the centred min(H, W) square, with LSUNBase's integer offsets."""
    h, w = img.shape[:2]
    c = min(h, w)
    return img[(h - c) // 2:(h + c) // 2, (w - c) // 2:(w + c) // 2]


def preprocess(img, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """A PIL image or uint8 array -> uint8 (size, size, 3): RGB, centre crop, resize."""
    from PIL import Image

    if isinstance(img, np.ndarray):
        arr = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        arr = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)
    else:
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    arr = np.ascontiguousarray(center_crop(np.asarray(arr, np.uint8)))
    if arr.shape[0] != size:
        arr = np.asarray(Image.fromarray(arr).resize((size, size), resample=_filter(
            interpolation)))
    return arr


def list_images(root: str, file_list: str = "") -> list[str]:
    """The image paths of a folder: those named in ``file_list`` (relative to ``root``, one a
    line), else every image file below ``root``, sorted (a fixed order: the data order of a
    run is a function of its seed)."""
    if file_list:
        if not os.path.isfile(file_list):
            raise FileNotFoundError(f"no file list at data.file_list={file_list!r}")
        with open(file_list) as f:
            names = [line.strip() for line in f if line.strip()]
        return [os.path.join(root, n) for n in names]
    out = []
    for folder, _, files in os.walk(root):
        out.extend(os.path.join(folder, n) for n in files if n.lower().endswith(EXTENSIONS))
    return sorted(out)


class ImageFolder:
    """The preprocessed images of a folder, decoded when taken (threads: ``workers``)."""

    def __init__(self, root: str, size: int, *, file_list: str = "",
                 interpolation: str = "bicubic", workers: int = 8, dataset: str = "image_folder"):
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"no image folder at data.path={root!r}.\n"
                                    + HOW_TO_GET.get(dataset, HOW_TO_GET["image_folder"]))
        self.paths = list_images(root, file_list)
        if not self.paths:
            raise FileNotFoundError(f"data.path={root!r} holds no images "
                                    f"({', '.join(EXTENSIONS)}).\n" + HOW_TO_GET.get(
                                        dataset, HOW_TO_GET["image_folder"]))
        self.size, self.interpolation = size, interpolation
        self.workers = max(1, int(workers))
        self.shape = (len(self.paths), size, size, 3)
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (S, S, 3)."""
        from PIL import Image

        path = self.paths[int(i)]
        try:
            with Image.open(path) as img:
                img.load()
                return preprocess(img, self.size, self.interpolation)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} (listed in the dataset) does not exist") \
                from None
        except Exception as e:  # PIL raises many types for a bad or truncated image
            raise errors.CorruptFile(f"{path} is not a readable image: {type(e).__name__}: "
                                     f"{errors.one_line(e, 200)}") from None

    def take(self, indices) -> np.ndarray:
        """uint8 (len(indices), S, S, 3) in the order of ``indices``."""
        indices = np.asarray(indices).reshape(-1)
        if len(indices) <= 1 or self.workers == 1:
            return np.stack([self.read(i) for i in indices]) if len(indices) else \
                np.zeros((0, self.size, self.size, 3), np.uint8)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers)  # PIL decodes without the GIL
        return np.stack(list(self._pool.map(self.read, indices)))


class TfdsImages:
    """A tensorflow-datasets build read by index (``tfds.data_source``: array_record builds),
    preprocessed as :class:`ImageFolder`."""

    def __init__(self, dataset: str, split: str, data_dir: str, size: int,
                 interpolation: str = "bicubic"):
        name = TFDS_NAMES.get(dataset)
        if name is None:
            raise ValueError(f"data.dataset={dataset!r} has no tensorflow-datasets build; use "
                             f"data.source=folder.\n{HOW_TO_GET.get(dataset, '')}")
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise FileNotFoundError("data.source=tfds needs tensorflow-datasets (pip install "
                                    f"tensorflow-datasets).\n{HOW_TO_GET[dataset]}") from None
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as e:  # tfds raises many error types for a missing/unprepared build
            raise FileNotFoundError(f"tfds could not open {name} ({errors.one_line(e, 300)})."
                                    f"\n{HOW_TO_GET[dataset]}") from None
        self.size, self.interpolation, self.name = size, interpolation, name

    def __len__(self) -> int:
        return len(self.source)

    def take(self, indices) -> np.ndarray:
        out = []
        for i in np.asarray(indices).reshape(-1):
            try:
                img = self.source[int(i)]["image"]
            except Exception as e:
                raise errors.CorruptFile(f"{self.name} record {int(i)} does not read: "
                                         f"{errors.one_line(e, 200)}") from None
            out.append(preprocess(np.asarray(img), self.size, self.interpolation))
        return np.stack(out)


def open_images(data_cfg):
    """The lazy source of an image dataset of ``data.dataset`` in :data:`DATASETS`."""
    ds, source = data_cfg.dataset, data_cfg.source
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r} is invalid for data.dataset={ds!r}; valid "
                         f"choices: {', '.join(SOURCES)}")
    use_tfds = source == "tfds" or (source == "auto" and not data_cfg.path and ds in TFDS_NAMES)
    if use_tfds:
        return TfdsImages(ds, data_cfg.split, data_cfg.path, data_cfg.image_size,
                          data_cfg.interpolation)
    return ImageFolder(data_cfg.path, data_cfg.image_size, file_list=data_cfg.file_list,
                       interpolation=data_cfg.interpolation, workers=data_cfg.workers,
                       dataset=ds)
