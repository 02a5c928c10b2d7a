"""Reading PyTorch-era weight files into NumPy without executing their pickles.

Formats: a PyTorch zip checkpoint (``torch.save`` since 1.6; PyTorch Lightning ``.ckpt``),
``.safetensors``, and ``.npz`` (a dict of arrays). Returns a flat ``name -> np.ndarray``
state dict (the ``state_dict`` entry of a Lightning checkpoint).

Why not only ``torch.load(weights_only=True)``: the CompVis Lightning checkpoints pickle
their callbacks keyed by the class ``pytorch_lightning.callbacks.model_checkpoint.
ModelCheckpoint``, which the weights-only unpickler refuses, and the default unpickler
would run whatever a crafted file names. The reader below resolves only the globals that
rebuild tensors and ordered dicts; every other global becomes an inert placeholder that
holds its arguments, so nothing from the file runs. Tensors are read lazily: optimizer
states in the same file are never loaded. torch is used (weights-only) only for files
written in the legacy pre-1.6 format.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile

import numpy as np

# torch storage class names -> NumPy dtypes (bfloat16 through ml_dtypes, a JAX dependency)
_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64",
                   "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
                   "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
                   "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16",
                       "BF16": "bfloat16", "I64": "int64", "I32": "int32", "I16": "int16",
                       "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class Placeholder:
    """Stands for any class or function a pickle names outside the tensor allow-list."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class LazyTensor:
    """A tensor of a zip checkpoint, read from its storage only when asked (``np.asarray``)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.shape, self.stride = tuple(size), tuple(stride)

    def __array__(self, dtype=None, copy=None):
        archive, entry, dt = self.storage
        flat = np.frombuffer(archive.read(entry), dt)
        if not self.shape:
            out = flat[self.offset:self.offset + 1].reshape(())
        else:
            out = np.lib.stride_tricks.as_strided(
                flat[self.offset:], self.shape, [s * dt.itemsize for s in self.stride])
        out = np.array(out)  # own the memory, C order
        return out if dtype is None else out.astype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return ("dtype", _STORAGE_DTYPES[name])
        # anything else (Lightning callbacks, omegaconf, argparse, ...) is never resolved
        return type(name, (Placeholder,), {"__module__": f"unresolved.{module}"})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind, key = pid[1], pid[2]
        if not (isinstance(kind, tuple) and kind[0] == "dtype"):
            raise pickle.UnpicklingError(f"unsupported storage type {kind!r}")
        return (self.archive, f"{self.prefix}data/{key}", _dtype(kind[1]))


def read_torch_zip(path: str):
    """The unpickled object of a PyTorch zip checkpoint, tensors as :class:`LazyTensor`."""
    archive = zipfile.ZipFile(path)
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a PyTorch zip checkpoint (no single data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    with archive.open(pkl[0]) as f:
        return _SafeUnpickler(f, archive, prefix).load()


def read_safetensors(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dt = _dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(data[start:end], dt).reshape(info["shape"]).copy()
    return out


def _legacy_torch(path: str):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a legacy (pre-1.6) PyTorch file; reading it needs "
                          "torch: pip install 'bidm_jax[torch]'") from e
    return torch.load(path, map_location="cpu", weights_only=True)


def _to_numpy(value):
    if isinstance(value, LazyTensor):
        return np.asarray(value)
    if hasattr(value, "detach"):  # a torch.Tensor from the legacy path
        return value.detach().cpu().numpy()
    return np.asarray(value)


def read_state_dict(path: str) -> dict:
    """Flat ``name -> np.ndarray`` of a weight file: a Lightning/PyTorch checkpoint (its
    ``state_dict`` entry, else the top-level dict), ``.safetensors`` or ``.npz``. Non-tensor
    entries are dropped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    obj = read_torch_zip(path) if zipfile.is_zipfile(path) else _legacy_torch(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (or a checkpoint holding "
                         f"'state_dict'), got {type(obj).__name__}")
    tensor_like = (LazyTensor, np.ndarray)
    return {k: _to_numpy(v) for k, v in obj.items()
            if isinstance(v, tensor_like) or hasattr(v, "detach")}
