"""An independent NumPy (float64, NCHW) re-computation of the CompVis LDM UNet forward from a
PyTorch-layout state dict, written from openaimodel.py's definitions (methods.md §1.2). The
block structure is read from the state-dict keys (in_layers -> ResBlock, qkv -> attention,
op -> Downsample, conv -> Upsample), not from the JAX model."""
import math

import numpy as np


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = t[:, None].astype(np.float64) * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def group_norm(x, w, b, eps=1e-5, groups=32):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return g.reshape(x.shape) * w.reshape(shape) + b.reshape(shape)


def conv2d(x, w, b, stride=1, pad=0):
    """x (N, I, H, W), w (O, I, kh, kw): cross-correlation as torch.nn.functional.conv2d."""
    kh, kw = w.shape[2:]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (x.shape[2] - kh) // stride + 1
    wo = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("nihw,oi->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def up2(x):
    return x.repeat(2, axis=2).repeat(2, axis=3)


def pool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def resblock(sd, p, x, emb, updown=None):
    """openaimodel ResBlock._forward; scale-shift when emb_layers.1 has 2 C_out rows."""
    cout = sd[f"{p}.in_layers.2.weight"].shape[0]
    h = silu(group_norm(x, sd[f"{p}.in_layers.0.weight"], sd[f"{p}.in_layers.0.bias"]))
    if updown:
        resample = up2 if updown == "up" else pool2
        h, x = resample(h), resample(x)
    h = conv2d(h, sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], pad=1)
    e = silu(emb) @ sd[f"{p}.emb_layers.1.weight"].T + sd[f"{p}.emb_layers.1.bias"]
    e = e[:, :, None, None]
    gn = lambda v: group_norm(v, sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"])
    if e.shape[1] == 2 * cout:
        scale, shift = e[:, :cout], e[:, cout:]
        h = gn(h) * (1 + scale) + shift
    else:
        h = gn(h + e)
    h = conv2d(silu(h), sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"], pad=1)
    if f"{p}.skip_connection.weight" in sd:
        x = conv2d(x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return x + h


def attention_block(sd, p, x, heads):
    """AttentionBlock + QKVAttentionLegacy on (N, C, H, W) with Conv1d weights (O, I, 1)."""
    n, c, hh, ww = x.shape
    xf = x.reshape(n, c, -1)
    hn = group_norm(xf, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"])
    qkv = np.einsum("oi,nit->not", sd[f"{p}.qkv.weight"][:, :, 0], hn) \
        + sd[f"{p}.qkv.bias"][None, :, None]
    ch = c // heads
    qkv = qkv.reshape(n * heads, 3 * ch, -1)
    q, k, v = qkv[:, :ch], qkv[:, ch:2 * ch], qkv[:, 2 * ch:]
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = np.einsum("bct,bcs->bts", q * scale, k * scale)
    w = np.exp(w - w.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    a = np.einsum("bts,bcs->bct", w, v).reshape(n, c, -1)
    h = np.einsum("oi,nit->not", sd[f"{p}.proj_out.weight"][:, :, 0], a) \
        + sd[f"{p}.proj_out.bias"][None, :, None]
    return (xf + h).reshape(x.shape)


def _block(sd, p, h, emb, heads_of, updown_of):
    j = 0
    while any(k.startswith(f"{p}.{j}.") for k in sd):
        q = f"{p}.{j}"
        if f"{q}.in_layers.0.weight" in sd:
            h = resblock(sd, q, h, emb, updown_of(q))
        elif f"{q}.qkv.weight" in sd:
            h = attention_block(sd, q, h, heads_of(h.shape[1]))
        elif f"{q}.op.weight" in sd:
            h = conv2d(h, sd[f"{q}.op.weight"], sd[f"{q}.op.bias"], stride=2, pad=1)
        elif f"{q}.conv.weight" in sd:
            h = conv2d(up2(h), sd[f"{q}.conv.weight"], sd[f"{q}.conv.bias"], pad=1)
        else:
            h = conv2d(h, sd[f"{q}.weight"], sd[f"{q}.bias"], pad=1)
        j += 1
    return h


def forward(sd, x, t, model_channels, heads_of, updown_of=lambda path: None):
    """eps (N, C, H, W) of the UNet in ``sd`` (keys without model.diffusion_model.).
    heads_of(channels) -> heads; updown_of(resblock path) -> None | 'up' | 'down'."""
    emb = timestep_embedding(t, model_channels)
    emb = silu(emb @ sd["time_embed.0.weight"].T + sd["time_embed.0.bias"])
    emb = emb @ sd["time_embed.2.weight"].T + sd["time_embed.2.bias"]
    hs, h, i = [], x, 0
    while f"input_blocks.{i}.0.weight" in sd or any(k.startswith(f"input_blocks.{i}.")
                                                    for k in sd):
        h = _block(sd, f"input_blocks.{i}", h, emb, heads_of, updown_of)
        hs.append(h)
        i += 1
    h = _block(sd, "middle_block", h, emb, heads_of, updown_of)
    i = 0
    while any(k.startswith(f"output_blocks.{i}.") for k in sd):
        h = _block(sd, f"output_blocks.{i}", np.concatenate([h, hs.pop()], 1), emb, heads_of,
                   updown_of)
        i += 1
    h = silu(group_norm(h, sd["out.0.weight"], sd["out.0.bias"]))
    return conv2d(h, sd["out.2.weight"], sd["out.2.bias"], pad=1)
