"""FID Inception weights: fetch, verify, convert (pytorch-fid ``.pth`` -> flat ``.npz``), load.

The weights are pytorch-fid's port of the TF graph ``inception-2015-12-05``:
``pt_inception-2015-12-05-6726825d.pth`` from pytorch-fid's GitHub release. Following the
torch.hub naming rule that pytorch-fid relies on, the 8 hex digits in the file name are the
first 8 of the file's SHA-256; that prefix is what we verify (``check_sha256_prefix``).

torch is needed only to *read* the ``.pth`` once (``convert_pth``); the converted ``.npz``
(keys = NNX variable paths such as ``Mixed_6d/branch1x1/conv/kernel``) loads without torch.

Layout mapping (methods.md §7): conv (O, I, kh, kw) -> (kh, kw, I, O); Linear (O, I) -> (I, O);
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var (eps 1e-3 is set by
the model, it is not stored in the state dict); ``num_batches_tracked`` is dropped.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from bidm_jax.convert import file_digest
from bidm_jax.metrics.inception import param_shapes

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
CONVERTED_FILENAME = "fid_inception_v3_flax.npz"
CACHE_ENV = "BIDM_JAX_CACHE"

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def cache_dir(configured: str = "") -> str:
    """Cache folder: the config field if set, else ``$BIDM_JAX_CACHE``, else ~/.cache/bidm_jax."""
    path = configured or os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "bidm_jax")
    os.makedirs(path, exist_ok=True)
    return path


def check_sha256_prefix(path: str, prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> str:
    """Raises ValueError unless the file's SHA-256 starts with ``prefix``; returns the digest."""
    digest = file_digest(path, "sha256")
    if not digest.startswith(prefix):
        raise ValueError(f"{path}: SHA-256 {digest} does not start with {prefix}; the file is "
                         f"corrupt or not {FID_WEIGHTS_FILENAME}. Delete it and fetch it again "
                         f"from {FID_WEIGHTS_URL}")
    return digest


def fetch_pth(directory: str, url: str = FID_WEIGHTS_URL, timeout: float = 60.0) -> str:
    """Returns the verified ``.pth`` in ``directory``, downloading it first if it is missing.

    Raises FileNotFoundError (saying where to put the file) when there is no network.
    """
    dest = os.path.join(directory, FID_WEIGHTS_FILENAME)
    if not os.path.exists(dest):
        logging.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, \
                    tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
                shutil.copyfileobj(r, tmp)
            os.replace(tmp.name, dest)
        except OSError as e:
            raise FileNotFoundError(
                f"Could not download the FID Inception weights ({e}).\nDownload\n  {url}\n"
                f"on a machine with network access and put it at\n  {dest}\n"
                f"(or point eval.inception_path at the .pth or at a converted .npz; the cache "
                f"folder is eval.cache_dir or ${CACHE_ENV}).") from e
    check_sha256_prefix(dest)
    return dest


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid InceptionV3 state dict (NumPy arrays) -> flat NNX arrays (float32).

    Keys: ``<Block>.<branch>.conv.weight`` -> ``<Block>/<branch>/conv/kernel`` (transposed to
    (kh, kw, I, O)); ``...bn.{weight,bias,running_mean,running_var}`` ->
    ``.../bn/{scale,bias,mean,var}``; ``fc.weight`` (1008, 2048) -> ``fc/kernel`` (2048, 1008);
    ``fc.bias`` -> ``fc/bias``. Unknown key shapes raise ValueError naming the key.
    """
    out = {}
    for key, value in state_dict.items():
        v = np.asarray(value)
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[-2:] == ["conv", "weight"]:
            if v.ndim != 4:
                raise ValueError(f"{key}: conv weight must be (O, I, kh, kw), got {v.shape}")
            out["/".join(parts[:-1] + ["kernel"])] = v.transpose(2, 3, 1, 0)
        elif len(parts) >= 2 and parts[-2] == "bn" and parts[-1] in _BN_NAMES:
            out["/".join(parts[:-1] + [_BN_NAMES[parts[-1]]])] = v
        elif key == "fc.weight":
            if v.ndim != 2:
                raise ValueError(f"{key}: linear weight must be (O, I), got {v.shape}")
            out["fc/kernel"] = v.T
        elif key == "fc.bias":
            out["fc/bias"] = v
        else:
            raise ValueError(f"unexpected key {key!r} in the Inception state dict")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def convert_pth(pth_path: str, npz_path: str) -> str:
    """Reads pytorch-fid's ``.pth`` with torch (CPU) and writes the flat ``.npz``."""
    try:
        import torch  # only needed here
    except ImportError as e:
        raise ImportError("Converting the .pth needs torch (pip install 'bidm_jax[torch]'); "
                          "alternatively convert once elsewhere and set eval.inception_path to "
                          "the resulting .npz.") from e
    sd = torch.load(pth_path, map_location="cpu", weights_only=True)
    arrays = convert_state_dict({k: v.detach().cpu().numpy() for k, v in sd.items()})
    tmp = npz_path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, npz_path)
    return npz_path


def load_flat_npz(model: nnx.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copies flat ``path -> array`` into the model's Param/BatchStat variables in place.

    Every model variable must be present with the same shape; the error names the tensor.
    """
    expected = param_shapes(model)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {extra[:5]} ({len(extra)} in all)")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ValueError(f"tensor {name}: file has shape {tuple(arrays[name].shape)}, "
                             f"model expects {shape}")
    for kind in (nnx.Param, nnx.BatchStat):
        state = nnx.state(model, kind)
        for path, var in nnx.to_flat_state(state):
            var.set_value(jnp.asarray(arrays["/".join(str(p) for p in path)]))
        nnx.update(model, state)


def save_flat_npz(model: nnx.Module, path: str) -> None:
    """Writes the model's Param/BatchStat variables as a flat ``.npz`` (inverse of load)."""
    arrays = {}
    for kind in (nnx.Param, nnx.BatchStat):
        for p, var in nnx.to_flat_state(nnx.state(model, kind)):
            arrays["/".join(str(x) for x in p)] = np.asarray(var.get_value())
    np.savez(path, **arrays)


def resolve_inception_npz(inception_path: str = "", cache: str = "") -> str:
    """Finds (or makes) the converted ``.npz``.

    Order: ``inception_path`` (.npz used as is; .pth verified and converted into the cache);
    else the converted file in the cache; else the cached or downloaded ``.pth``, converted.
    """
    directory = cache_dir(cache)
    converted = os.path.join(directory, CONVERTED_FILENAME)
    if inception_path:
        if not os.path.exists(inception_path):
            raise FileNotFoundError(f"eval.inception_path={inception_path!r} does not exist")
        if inception_path.endswith(".npz"):
            return inception_path
        check_sha256_prefix(inception_path)
        return convert_pth(inception_path, converted)
    if os.path.exists(converted):
        return converted
    return convert_pth(fetch_pth(directory), converted)


def abstract_inception(precision=None) -> nnx.Module:
    """The FID Inception's structure without allocating or initialising weights."""
    from bidm_jax.metrics.inception import FIDInceptionV3

    kw = {} if precision is None else {"precision": precision}
    return nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0), **kw))


def inception_from_flat(arrays: dict[str, np.ndarray], precision=None) -> nnx.Module:
    """FID Inception holding the given flat weights (skips random initialisation, which on
    CPU costs tens of seconds of compilation for 95 distinct kernel shapes)."""
    model = abstract_inception(precision)
    load_flat_npz(model, arrays)
    return model


def numpy_init_flat(model: nnx.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh weights for every Param/BatchStat of ``model`` (abstract is fine), from NumPy.

    He-normal kernels (fan-in = all but the last axis), unit BN scale and variance, zero
    bias and mean. Drawing them on the host avoids compiling one XLA random-number program
    per variable shape, which takes tens of seconds on CPU.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(model).items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            out[name] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif leaf in ("scale", "var"):
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def random_flat_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random FID-Inception weights (``numpy_init_flat``). Only for speed measurements and
    shape tests: features from these weights mean nothing."""
    return numpy_init_flat(abstract_inception(), seed)
