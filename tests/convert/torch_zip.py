"""Writes PyTorch-zip-format checkpoints without torch (test fixtures): the ``data.pkl``
pickle with storages as persistent ids and tensors rebuilt by
``torch._utils._rebuild_tensor_v2``, as ``torch.save`` lays them out. ``Global`` and
``Reduce`` let a fixture name arbitrary globals (a Lightning callback class, ``os.system``)
to check that the reader never resolves them."""
import collections
import io
import pickle
import zipfile

import numpy as np

_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
          np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage"}


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args


class _Storage:
    def __init__(self, type_name, key, numel):
        self.type_name, self.key, self.numel = type_name, key, numel


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None


def _save_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())


def _save_reduce(self, obj):
    self.save(obj.func)
    self.save(obj.args)
    self.write(pickle.REDUCE)


_Pickler.dispatch[Global] = _save_global
_Pickler.dispatch[Reduce] = _save_reduce


def save(obj, path):
    """``torch.save(obj, path)`` for nested dicts/lists whose tensors are NumPy arrays."""
    blobs = {}

    def convert(v):
        if isinstance(v, np.ndarray):
            v = np.array(v, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
            key = str(len(blobs))
            blobs[key] = v.tobytes()
            stride = tuple(s // v.itemsize for s in v.strides)
            storage = _Storage(_TYPES[v.dtype], key, v.size)
            return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                          (storage, 0, v.shape, stride, False, collections.OrderedDict()))
        if isinstance(v, dict):
            return type(v)((k, convert(x)) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return type(v)(convert(x) for x in v)
        return v

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(convert(obj))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        for key, data in blobs.items():
            z.writestr(f"archive/data/{key}", data)
