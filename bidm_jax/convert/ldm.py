"""CompVis latent-diffusion checkpoints -> project checkpoints (methods.md §7.2).

    python -m bidm_jax.convert.ldm --checkpoint models/ldm/lsun_beds256/model.ckpt \
        --out checkpoints/lsun_beds256 [--which unet|first_stage|both]

Inputs: a LatentDiffusion Lightning checkpoint (``state_dict`` with
``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the autoencoder), the
diffusion buffers, ``scale_factor`` and, when present, LitEma's ``model_ema.*``), or a
standalone first-stage checkpoint (``models/first_stage_models/{vq-f4,kl-f8}/model.ckpt``:
``encoder.*``, ``decoder.*``, ``quantize.*``, ...; its ``loss.*`` are ignored). Also a
``.npz`` or ``.safetensors`` with the same names. torch is not needed
(``convert.tensor_files``).

Outputs under ``--out``: ``unet/`` (params; EMA weights as ``ema`` when the file has them;
``diffusion_buffers.npz``) and/or ``first_stage/`` (params; ``scale_factor`` in
``meta.json``), each a params-only checkpoint with a ``meta.json`` recording the input's
sha256, the model, tensor counts and the sha256 of the converted tensors (checked again
after reading the written checkpoint back).

Layouts: Conv2d (O, I, kh, kw) -> kernel (kh, kw, I, O); Conv1d (O, I, 1) (the UNet's
attention qkv/proj_out) -> 1x1 kernel (1, 1, I, O); Linear (O, I) -> (I, O); GroupNorm
weight -> scale; the codebook ``quantize.embedding.weight`` (n, d) -> ``embedding`` as is.
Tensor counts: 368 (LDM-4 UNet), 520 (LDM-8 UNet), 205 (VQ-f4), 248 (KL-f8).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
from flax import nnx

from bidm_jax.convert import file_digest
from bidm_jax.convert.tensor_files import read_state_dict
from bidm_jax.models.autoencoder import PRESETS as AE_PRESETS
from bidm_jax.models.autoencoder import AEConfig, build_autoencoder
from bidm_jax.models.functional import Functional, check_shapes
from bidm_jax.models.ldm_family import PRESETS as UNET_PRESETS

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
# LatentDiffusion.register_schedule buffers (ldm/models/diffusion/ddpm.py)
DIFFUSION_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                     "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                     "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2")
# left by a DDIM sampler run before saving; BiDM/BinaryDM's loaders delete them too
DDIM_BUFFERS = ("ddim_sigmas", "ddim_alphas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas")
NUM_TENSORS = {"ldm4": 368, "ldm8": 520, "vq-f4": 205, "kl-f8": 248}


def is_conv1d(name: str) -> bool:
    """The UNet's attention projections are Conv1d (O, I, 1) in PyTorch."""
    return name.endswith((".qkv", ".proj_out"))


# --- layouts ---------------------------------------------------------------------------------

def from_torch(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """One PyTorch tensor -> (project name, array in the NHWC layout)."""
    base, leaf = key.rsplit(".", 1)
    if leaf == "bias":
        return f"{base}.bias", value
    if leaf != "weight":
        raise ValueError(f"unexpected tensor {key!r} {value.shape}: not a weight or bias")
    if value.ndim == 1:
        return f"{base}.scale", value  # GroupNorm
    if value.ndim == 2:
        if base.endswith("quantize.embedding"):
            return f"{base}.embedding", value
        return f"{base}.kernel", value.T
    if value.ndim == 3:
        return f"{base}.kernel", value[:, :, 0].T[None, None]
    if value.ndim == 4:
        return f"{base}.kernel", value.transpose(2, 3, 1, 0)
    raise ValueError(f"unexpected rank of {key!r}: {value.shape}")


def to_torch(name: str, value: np.ndarray, conv1d: bool) -> tuple[str, np.ndarray]:
    """Inverse of :func:`from_torch`; ``conv1d``: write 1x1 kernels as Conv1d weights."""
    base, leaf = name.rsplit(".", 1)
    if leaf == "bias":
        return f"{base}.bias", value
    if leaf in ("scale", "embedding"):
        return f"{base}.weight", value
    if value.ndim == 2:
        return f"{base}.weight", value.T
    if conv1d:
        return f"{base}.weight", value[0, 0].T[:, :, None]
    return f"{base}.weight", value.transpose(3, 2, 0, 1)


def _shaped(shape) -> np.ndarray:
    """A zero-stride view of ``shape`` (no memory): lets the layout code run on shapes."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), tuple(shape),
                                           (0,) * len(shape))


def torch_layout(shapes: dict, conv1d=lambda name: False) -> dict:
    """Project shapes (name -> .shape) -> PyTorch names and shapes (name -> view)."""
    out = {}
    for name, s in shapes.items():
        key, v = to_torch(name, _shaped(s.shape), conv1d(name.rsplit(".", 1)[0]))
        out[key] = v
    return out


def to_state_dict(params: dict, conv1d=lambda name: False) -> dict:
    """Project params -> PyTorch names/layouts (contiguous float32 copies)."""
    return {k: np.ascontiguousarray(v, np.float32) for k, v in
            (to_torch(n, np.asarray(p), conv1d(n.rsplit(".", 1)[0])) for n, p in params.items())}


def ema_key(key: str) -> str:
    """LitEma's buffer name of UNet tensor ``key`` (ldm/modules/ema.py removes the dots)."""
    return EMA_PREFIX + ("diffusion_model." + key).replace(".", "")


# --- models ----------------------------------------------------------------------------------

def unet_graph(model_config) -> Functional:
    from bidm_jax.build import fp_graph
    return fp_graph(model_config)


def first_stage_graph(ae_config: AEConfig) -> Functional:
    return Functional(nnx.eval_shape(lambda: build_autoencoder(ae_config, rngs=nnx.Rngs(0))))


def detect_unet(sd: dict, prefix: str = UNET_PREFIX) -> str:
    """The preset (ldm4 / ldm8) whose first conv matches ``input_blocks.0.0.weight``."""
    key = prefix + "input_blocks.0.0.weight"
    if key not in sd:
        raise ValueError(f"the checkpoint has no {key!r}: not a CompVis LDM UNet")
    for name, make in UNET_PRESETS.items():
        m = make()
        if tuple(sd[key].shape) == (m.ch, m.in_channels, 3, 3):
            return name
    raise ValueError(f"{key} has shape {tuple(sd[key].shape)}, which matches no preset "
                     f"({', '.join(UNET_PRESETS)}); pass the model config explicitly")


def detect_first_stage(sd: dict, prefix: str) -> str:
    return "vq-f4" if prefix + "quantize.embedding.weight" in sd else "kl-f8"


def _take(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _convert(sd: dict, fm: Functional, prefix: str, what: str, conv1d=lambda n: False) -> dict:
    """Checks names/shapes in the PyTorch layout (errors name the full checkpoint key), then
    converts; the result is checked against the model once more."""
    expected = {prefix + k: v for k, v in torch_layout(fm.shapes(), conv1d).items()}
    check_shapes(expected, {prefix + k: v for k, v in sd.items()}, what)
    params = dict(from_torch(k, np.asarray(v, np.float32)) for k, v in sd.items())
    params = {k: np.ascontiguousarray(v) for k, v in params.items()}
    check_shapes(fm.shapes(), params, what)
    return params


def convert_unet(sd: dict, model_config=None, *, prefix: str = UNET_PREFIX):
    """UNet tensors of a LatentDiffusion state dict -> (params, ema or None, preset).

    ``sd``: the full state dict (keys with ``prefix``); ``model_config``: the ``model``
    section (None: detect LDM-4 / LDM-8 from the first conv)."""
    preset = None
    if model_config is None:
        preset = detect_unet(sd, prefix)
        model_config = UNET_PRESETS[preset]()
    fm = unet_graph(model_config)
    unet = _take(sd, prefix)
    params = _convert(unet, fm, prefix, "the UNet (model.diffusion_model.*)", is_conv1d)
    ema = None
    if any(k.startswith(EMA_PREFIX) for k in sd):
        names = {ema_key(k): k for k in unet}
        if len(names) != len(unet):
            raise ValueError("LitEma names collide for this UNet (dots removed)")
        ema_sd = {names[k]: v for k, v in sd.items() if k in names}
        missing = sorted(set(names) - set(sd))
        if missing:
            raise ValueError(f"the checkpoint has model_ema.* but lacks {len(missing)} EMA "
                             f"tensors, e.g. {missing[:3]}")
        ema = _convert(ema_sd, fm, prefix, "the UNet EMA (model_ema.*)", is_conv1d)
    return params, ema, preset


def convert_first_stage(sd: dict, ae_config: AEConfig | None = None, *, prefix: str = ""):
    """Autoencoder tensors (keys with ``prefix``; ``loss.*`` ignored) -> (params, config)."""
    if ae_config is None:
        ae_config = AE_PRESETS[detect_first_stage(sd, prefix)]
    part = {k: v for k, v in _take(sd, prefix).items()
            if not k.startswith(("loss.", "model_ema."))}
    fm = first_stage_graph(ae_config)
    what = f"the {ae_config.kind.upper()} autoencoder ({prefix or 'standalone '}*)"
    return _convert(part, fm, prefix, what), ae_config


def ignored_keys(sd: dict) -> list[str]:
    """Top-level tensors no converted model uses (recorded in meta.json)."""
    known = (UNET_PREFIX, FIRST_STAGE_PREFIX, EMA_PREFIX, "loss.", "encoder.", "decoder.",
             "quant_conv.", "post_quant_conv.", "quantize.")
    skip = set(DIFFUSION_BUFFERS) | set(DDIM_BUFFERS) | {"scale_factor"}
    return sorted(k for k in sd if not k.startswith(known) and k not in skip)


def params_digest(params: dict) -> str:
    """sha256 over the sorted names, shapes and float32 bytes of a flat params dict."""
    h = hashlib.sha256()
    for name in sorted(params):
        v = np.ascontiguousarray(np.asarray(params[name], np.float32))
        h.update(f"{name}{v.shape}".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def _write(out: str, params: dict, ema: dict | None, meta: dict, verify: bool) -> None:
    from bidm_jax.training import checkpoint

    meta["params_sha256"] = params_digest(params)
    if ema is not None:
        meta["ema_sha256"] = params_digest(ema)
    checkpoint.write_params(out, params, ema=ema, meta=meta)
    if verify:
        for use_ema, key in ((False, "params_sha256"), (True, "ema_sha256")):
            if key in meta and params_digest(checkpoint.load_params(out, use_ema=use_ema)) \
                    != meta[key]:
                raise ValueError(f"{out}: the written checkpoint does not read back as "
                                 f"converted ({key} differs)")


def convert_file(path: str, out: str, which: str = "both", *, model_config=None,
                 ae_config: AEConfig | None = None, expect_sha256: str | None = None,
                 verify: bool = True) -> dict:
    """Converts ``path`` into ``out/unet`` and/or ``out/first_stage``; returns their meta.
    ``both`` on a standalone first-stage file converts the autoencoder only."""
    if which not in ("unet", "first_stage", "both"):
        raise ValueError(f"--which={which!r} is invalid; valid choices: unet, first_stage, both")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path!r}. The LDM models are models/ldm/{{lsun_beds256,"
            "lsun_churches256,ffhq256}/model.ckpt and the autoencoders models/"
            "first_stage_models/{vq-f4,kl-f8}/model.ckpt of CompVis/latent-diffusion "
            "(see docs/ldm.md)")
    digest = file_digest(path, "sha256")
    if expect_sha256 and digest != expect_sha256.lower():
        raise ValueError(f"{path} has sha256 {digest}, not the expected {expect_sha256}")
    sd = read_state_dict(path)
    lightning = any(k.startswith(UNET_PREFIX) or k.startswith(FIRST_STAGE_PREFIX) for k in sd)
    source = {"source": os.path.basename(path), "sha256": digest, "ignored": ignored_keys(sd)}
    scale = float(np.asarray(sd["scale_factor"])) if "scale_factor" in sd else None
    has_unet = any(k.startswith(UNET_PREFIX) for k in sd)
    if which == "both" and not has_unet:  # a standalone autoencoder file
        which = "first_stage"
    metas = {}
    if which in ("unet", "both"):
        if not has_unet:
            raise ValueError(f"{path} holds no UNet (model.diffusion_model.*): a standalone "
                             "first-stage checkpoint? use --which first_stage")
        params, ema, preset = convert_unet(sd, model_config)
        meta = dict(source, part="unet", model=preset or "custom", tensors=len(params),
                    ema=ema is not None, scale_factor=scale)
        for k in ("model_ema.decay", "model_ema.num_updates"):
            if k in sd:
                meta[k.replace(".", "_")] = float(np.asarray(sd[k]))
        buffers = {k: np.asarray(sd[k]) for k in DIFFUSION_BUFFERS if k in sd}
        if "betas" in buffers:  # sqrt-linear schedule end points (methods.md §1.2)
            meta["beta_start"], meta["beta_end"] = (float(buffers["betas"][0]),
                                                    float(buffers["betas"][-1]))
        unet_dir = os.path.join(out, "unet")
        _write(unet_dir, params, ema, meta, verify)
        if buffers:
            np.savez(os.path.join(unet_dir, "diffusion_buffers.npz"), **buffers)
        metas["unet"] = meta
    if which in ("first_stage", "both"):
        prefix = FIRST_STAGE_PREFIX if lightning else ""
        if prefix + "encoder.conv_in.weight" not in sd:
            raise ValueError(f"{path} holds no first-stage model ({prefix}encoder.*)")
        params, cfg = convert_first_stage(sd, ae_config, prefix=prefix)
        meta = dict(source, part="first_stage", kind=cfg.kind, tensors=len(params),
                    scale_factor=scale if scale is not None else cfg.scale_factor,
                    config=_jsonable(cfg))
        _write(os.path.join(out, "first_stage"), params, None, meta, verify)
        metas["first_stage"] = meta
    return metas


def _jsonable(cfg: AEConfig) -> dict:
    import dataclasses
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def load_first_stage(directory: str):
    """The autoencoder a ``first_stage/`` directory holds (its config and scale_factor from
    meta.json), as an NNX module ready to ``encode_latent`` / ``decode_latent``."""
    import dataclasses

    from bidm_jax.training import checkpoint

    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    cfg = dataclasses.replace(AEConfig(**fields), scale_factor=float(meta["scale_factor"]))
    fm = first_stage_graph(cfg)  # abstract: the values come from the checkpoint and meta
    return fm.module(checkpoint.load_params(directory, use_ema=False),
                     {"scale_factor": np.asarray(cfg.scale_factor, np.float32)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="LDM model.ckpt, first-stage model.ckpt, .safetensors or .npz")
    parser.add_argument("--out", required=True, help="output directory (unet/, first_stage/)")
    parser.add_argument("--which", default="both", choices=("unet", "first_stage", "both"))
    parser.add_argument("--sha256", default=None, help="refuse a file with another sha256")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reading the written checkpoints back")
    args = parser.parse_args(argv)
    metas = convert_file(args.checkpoint, args.out, args.which, expect_sha256=args.sha256,
                         verify=not args.no_verify)
    for part, meta in metas.items():
        shown = {k: v for k, v in meta.items() if k != "ignored"}
        print(f"wrote {os.path.join(args.out, part)}: {shown}")


if __name__ == "__main__":
    main()
