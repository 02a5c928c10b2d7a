"""Official DDIM CIFAR-10 checkpoint (pesser/ermongroup ``model-790000.ckpt``) → project
checkpoint (methods.md §7.1).

    python -m bidm_jax.convert.ddim_cifar10 --ckpt ema_diffusion_cifar10_model/model-790000.ckpt \
        --out checkpoints/ddim_cifar10_ema

The result is a params-only orbax checkpoint that ``--config.ckpt.init_from`` (teacher training)
and the distillation teacher path accept. torch is needed only to read the ``.ckpt`` file.

Layouts: Conv2d (O, I, kh, kw) → kernel (kh, kw, I, O); Linear (O, I) → (I, O);
GroupNorm weight/bias → scale/bias. Keys keep their names (``down.1.attn.0.q.weight`` →
``down.1.attn.0.q.kernel``); a ``module.`` prefix (DataParallel) is stripped.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping

import numpy as np

from bidm_jax.convert import file_digest

# ermongroup/ddim functions/ckpt_util.py
KNOWN_MD5 = {"1fa350b952534ae442b1d5235cce5cd3": "ema_cifar10",
             "82ed3067fd1002f5cf4c339fb80c4669": "cifar10"}
NUM_TENSORS = 328


def _is_norm(name: str) -> bool:
    return name.rsplit(".", 2)[-2].startswith("norm")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Official PyTorch names/layouts → flat project params (name → float32 array)."""
    out = {}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        key = key[len("module."):] if key.startswith("module.") else key
        base, leaf = key.rsplit(".", 1)
        if leaf not in ("weight", "bias"):
            raise ValueError(f"unexpected tensor {key!r} {value.shape} in the DDIM checkpoint")
        if leaf == "bias":
            out[f"{base}.bias"] = value
        elif _is_norm(key):
            out[f"{base}.scale"] = value
        elif value.ndim == 4:
            out[f"{base}.kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        elif value.ndim == 2:
            out[f"{base}.kernel"] = np.ascontiguousarray(value.T)
        else:
            raise ValueError(f"unexpected weight rank for {key!r}: {value.shape}")
    return out


def to_state_dict(params: Mapping[str, np.ndarray]) -> dict:
    """Inverse of ``convert_state_dict`` (project params → official names/layouts)."""
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        base, leaf = name.rsplit(".", 1)
        if leaf == "bias":
            out[f"{base}.bias"] = value
        elif leaf == "scale":
            out[f"{base}.weight"] = value
        elif value.ndim == 4:
            out[f"{base}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        else:
            out[f"{base}.weight"] = np.ascontiguousarray(value.T)
    return out


def read_torch_checkpoint(path: str) -> dict:
    """Reads a plain state_dict ``.ckpt`` (or a BiDM-style list whose first item is one)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading a PyTorch checkpoint needs torch: "
                          "pip install 'bidm_jax[torch]'") from e
    # weights_only: tensors and plain containers only. The default unpickler would run any
    # code a crafted file names; the official EMA model and BiDM's list format load this way.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, (list, tuple)):
        obj = obj[0]
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def convert_file(ckpt: str, out: str, model_config=None, *, check_md5: bool = True) -> dict:
    """Converts ``ckpt`` and writes a project checkpoint to ``out``; returns info."""
    from bidm_jax.build import fp_graph
    from bidm_jax.models.functional import check_shapes
    from bidm_jax.training import checkpoint

    if not os.path.isfile(ckpt):
        raise FileNotFoundError(
            f"no checkpoint at {ckpt!r}. The EMA DDPM CIFAR-10 model is "
            "ema_diffusion_cifar10_model/model-790000.ckpt from pesser/pytorch_diffusion "
            "(md5 1fa350b952534ae442b1d5235cce5cd3).")
    digest = file_digest(ckpt, "md5")
    if check_md5 and digest not in KNOWN_MD5:
        raise ValueError(f"{ckpt} has md5 {digest}, not one of the official files "
                         f"{KNOWN_MD5}; pass --no-check-md5 to convert it anyway")
    params = convert_state_dict(read_torch_checkpoint(ckpt))
    model_config = model_config if model_config is not None else default_model_config()
    check_shapes(fp_graph(model_config).shapes(), params, f"converted {ckpt}")
    meta = {"source": os.path.basename(ckpt), "md5": digest,
            "variant": KNOWN_MD5.get(digest, "unknown"), "tensors": len(params)}
    checkpoint.write_params(out, params, meta=meta)
    return meta


def default_model_config():
    """The DDIM CIFAR-10 model section of configs/default.py, without importing configs/."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        name="ddim_unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1, in_channels=3, out_ch=3, resolution=32, resamp_with_conv=True,
        dtype="float32"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="official model-790000.ckpt")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--no-check-md5", action="store_true",
                        help="convert files whose md5 is not one of the official two")
    args = parser.parse_args(argv)
    meta = convert_file(args.ckpt, args.out, default_model_config(),
                        check_md5=not args.no_check_md5)
    print(f"wrote {args.out}: {meta}")


if __name__ == "__main__":
    main()
