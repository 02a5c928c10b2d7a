"""The ``eval`` section of the project config (methods.md §6 protocol) and its validation."""
from __future__ import annotations

import ml_collections

FEATURES = ("inception", "proxy")
PREPROCESS = ("adm", "pytorch_fid")
PRECISIONS = ("highest", "high", "default")
REF_SPLITS = ("train", "test")


def get_eval_config() -> ml_collections.ConfigDict:
    """Defaults follow ADM's evaluator: 50,000 samples, reference = the whole training set,
    precision/recall against 10,000 reference images with k = 3, IS splits of 5,000."""
    c = ml_collections.ConfigDict()
    c.features = "inception"          # "inception" (FID Inception) or "proxy" (own classifier)
    c.num_samples = 50000             # samples read from the npz; 0 = all of them
    c.batch_size = 256                # feature-extraction batch (global, split over devices)
    c.samples_path = ""               # default {workdir}/samples/samples[_<sample.tag>].npz
    # Reference: a --mode ref_stats file, an ADM reference batch (arr_0 and/or mu/sigma), or
    # '' = {workdir}/eval/ref_<dataset>_<R>px_<split>[_n<N>]_<features>.npz (built if missing).
    c.ref_path = ""
    c.ref_split = "train"             # dataset split the reference statistics are built from
    c.ref_num_images = 0              # cap: the first N images of the split; 0 = all of it
    c.pr_num_images = 10000           # reference subset kept for precision/recall and KID
    c.ref_store_images = True         # also store that subset as arr_0 (ADM's evaluator reads it)
    c.cache_dir = ""                  # weights cache; "" -> $BIDM_JAX_CACHE or ~/.cache/bidm_jax
    c.inception_path = ""             # .pth (pytorch-fid) or converted .npz; "" -> cache/download
    c.inception_preprocess = "adm"    # "adm" (TF1 resize, (x-128)/128) or "pytorch_fid"
    c.precision = "highest"           # conv/matmul precision of the feature networks
    c.is_split_size = 5000
    c.pr_k = 3
    c.pr_block = 1024                 # rows per distance block for precision/recall
    c.kid_subsets = 100
    c.kid_subset_size = 1000
    # Proxy feature network (a CIFAR-10 classifier trained here; its numbers are proxies).
    c.proxy_path = ""                 # default {workdir}/proxy/proxy_features.npz
    c.proxy_width = 64                # channels of the first stage (x2, x4 in later stages)
    c.proxy_embed_dim = 256           # "pool" feature size
    c.proxy_spatial_channels = 8      # channels of the 16x16 map kept for the sFID analogue
    c.proxy_steps = 3000
    c.proxy_batch_size = 512
    c.proxy_lr = 0.2                  # SGD with Nesterov momentum, cosine decay
    c.proxy_warmup_steps = 200
    c.proxy_weight_decay = 5e-4
    c.proxy_log_every = 200
    return c


def validate_eval_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the bad field and its valid values."""
    def choice(name, options):
        if cfg[name] not in options:
            raise ValueError(f"eval.{name} must be one of {options}, got {cfg[name]!r}")

    def at_least(name, low):
        if cfg[name] < low:
            raise ValueError(f"eval.{name} must be >= {low}, got {cfg[name]!r}")

    choice("features", FEATURES)
    choice("inception_preprocess", PREPROCESS)
    choice("precision", PRECISIONS)
    choice("ref_split", REF_SPLITS)
    for name in ("num_samples", "ref_num_images"):
        at_least(name, 0)
    for name in ("batch_size", "is_split_size", "pr_k", "pr_block", "kid_subsets",
                 "pr_num_images", "proxy_width", "proxy_embed_dim", "proxy_spatial_channels",
                 "proxy_steps", "proxy_batch_size"):
        at_least(name, 1)
    at_least("kid_subset_size", 2)
    at_least("proxy_warmup_steps", 0)
    if cfg.proxy_spatial_channels > 2 * cfg.proxy_width:
        raise ValueError(f"eval.proxy_spatial_channels ({cfg.proxy_spatial_channels}) must be "
                         f"<= 2 * eval.proxy_width ({2 * cfg.proxy_width})")
    if not cfg.proxy_lr > 0:
        raise ValueError(f"eval.proxy_lr must be > 0, got {cfg.proxy_lr!r}")
