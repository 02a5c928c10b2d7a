"""Where reference statistics come from: the configured dataset (``data.*``) read through the
project's pipeline (:func:`bidm_jax.data.pipeline.load_images`: CIFAR-10 and the digits in
memory; image folders, LSUN and FFHQ lazily with the LDM preprocessing), and the file names
that say which dataset, resolution, split, count and feature network they hold.
"""
from __future__ import annotations

import os

import ml_collections

# What a config's ``data`` section holds when a field is missing (configs/default.py's values):
# evaluation configs that only set data.path keep meaning CIFAR-10.
_DATA_DEFAULTS = {"dataset": "cifar10", "source": "auto", "path": "", "file_list": "",
                  "split": "train", "image_size": 32, "random_flip": False,
                  "interpolation": "bicubic", "workers": 8}
_NAMES = {"cifar10": "CIFAR-10", "digits": "digits (embedded)", "lsun_bedrooms": "LSUN bedrooms",
          "lsun_churches": "LSUN church_outdoor", "ffhq": "FFHQ", "image_folder": "image folder"}


def ref_data_config(config) -> ml_collections.ConfigDict:
    """A copy of ``config.data`` with the reference split (``eval.ref_split``) and defaults for
    missing fields; image folders ignore the split (``data.file_list`` chooses the images)."""
    data = config.get("data") if "data" in config else None
    fields = dict(_DATA_DEFAULTS)
    if data is not None:
        fields.update({k: data[k] for k in data.keys()})
    fields["split"] = config.eval.ref_split
    fields["random_flip"] = False  # statistics of the images themselves, never mirrored
    return ml_collections.ConfigDict(fields)


def dataset_label(data_cfg) -> str:
    """Human-readable name of the data ('CIFAR-10 JPEG q75', 'LSUN bedrooms 256px', ...)."""
    ds, path = data_cfg.dataset, data_cfg.path
    if ds == "cifar10":
        if path and path.endswith(".npz"):
            return "CIFAR-10 JPEG q75" if "q75" in os.path.basename(path) else "CIFAR-10 JPEG npz"
        return "CIFAR-10"
    name = _NAMES.get(ds, ds)
    if ds == "image_folder":
        name = f"image folder {os.path.basename(os.path.normpath(path)) or path}"
    extra = []
    if ds in ("lsun_bedrooms", "lsun_churches", "ffhq", "image_folder"):
        extra.append(f"{data_cfg.image_size}px {data_cfg.interpolation}")
        if data_cfg.file_list:
            extra.append(f"list {os.path.basename(data_cfg.file_list)}")
    return f"{name} ({', '.join(extra)})" if extra else name


def default_ref_path(config, workdir: str) -> str:
    """``eval.ref_path``, else ``{workdir}/eval/ref_{dataset}_{R}px_{split}[_n{N}]_{features}
    .npz`` (N: ``eval.ref_num_images`` when it caps the split)."""
    cfg = config.eval
    if cfg.ref_path:
        return cfg.ref_path
    data = ref_data_config(config)
    cap = f"_n{cfg.ref_num_images}" if cfg.ref_num_images else ""
    name = f"ref_{data.dataset}_{data.image_size}px_{data.split}{cap}_{cfg.features}.npz"
    return os.path.join(workdir, "eval", name)


def open_reference_images(config):
    """The reference images and their provenance: ``(images, n, source, meta)``.

    images: a uint8 (N, R, R, 3) array or a lazy source (read in blocks, never all held);
    n: how many are used (the first ``eval.ref_num_images``, 0 = all); source: a label for
    metrics.json; meta: provenance stored in the reference file.
    """
    from bidm_jax.data.pipeline import load_images

    data = ref_data_config(config)
    images = load_images(data)
    size = len(images)
    cap = int(config.eval.ref_num_images)
    n = min(cap, size) if cap else size
    label = dataset_label(data)
    source = f"{label} {data.split}" + (f", first {n:,} of {size:,}" if n < size else "")
    meta = {"dataset": data.dataset, "image_size": int(data.image_size), "split": data.split,
            "dataset_size": int(size), "data_path": os.path.basename(
                os.path.normpath(data.path)) if data.path else ""}
    return images, n, source, meta
