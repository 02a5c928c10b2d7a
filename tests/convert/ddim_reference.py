"""An independent NumPy (NCHW, PyTorch layouts) re-computation of the ermongroup DDIM UNet,
written from methods.md §1.1/§7.1, used to check the converter and the Flax model together.
It also enumerates the official state-dict keys and shapes for any config."""
import math

import numpy as np


def official_shapes(ch=128, ch_mult=(1, 2, 2, 2), nrb=2, attn=(16,), res=32, cin=3, cout=3):
    """Official state-dict names → shapes (PyTorch layouts), in construction order."""
    s = {}

    def conv(name, o, i, k):
        s[f"{name}.weight"] = (o, i, k, k)
        s[f"{name}.bias"] = (o,)

    def lin(name, o, i):
        s[f"{name}.weight"] = (o, i)
        s[f"{name}.bias"] = (o,)

    def norm(name, c):
        s[f"{name}.weight"] = (c,)
        s[f"{name}.bias"] = (c,)

    def block(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", o, i, 3)
        lin(f"{name}.temb_proj", o, 4 * ch)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o, 3)
        if i != o:
            conv(f"{name}.nin_shortcut", o, i, 1)

    def attn_block(name, c):
        norm(f"{name}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{n}", c, c, 1)

    lin("temb.dense.0", 4 * ch, ch)
    lin("temb.dense.1", 4 * ch, 4 * ch)
    conv("conv_in", ch, cin, 3)
    in_mult = (1,) + tuple(ch_mult)
    cur, block_in = res, ch
    for lv in range(len(ch_mult)):
        block_in, block_out = ch * in_mult[lv], ch * ch_mult[lv]
        for b in range(nrb):
            block(f"down.{lv}.block.{b}", block_in, block_out)
            block_in = block_out
            if cur in attn:
                attn_block(f"down.{lv}.attn.{b}", block_in)
        if lv != len(ch_mult) - 1:
            conv(f"down.{lv}.downsample.conv", block_in, block_in, 3)
            cur //= 2
    block("mid.block_1", block_in, block_in)
    attn_block("mid.attn_1", block_in)
    block("mid.block_2", block_in, block_in)
    for lv in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[lv]
        for b in range(nrb + 1):
            skip = ch * (in_mult[lv] if b == nrb else ch_mult[lv])
            block(f"up.{lv}.block.{b}", block_in + skip, block_out)
            block_in = block_out
            if cur in attn:
                attn_block(f"up.{lv}.attn.{b}", block_in)
        if lv != 0:
            conv(f"up.{lv}.upsample.conv", block_in, block_in, 3)
            cur *= 2
    norm("norm_out", block_in)
    conv("conv_out", cout, block_in, 3)
    return s


# ---- NumPy NCHW forward ------------------------------------------------------------------

def conv2d(x, w, b, stride=1, pad=0):
    """x (B, I, H, W), w (O, I, k, k) — direct cross-correlation as torch.nn.Conv2d."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    B, _, H, W = x.shape
    Ho, Wo = (H - k) // stride + 1, (W - k) // stride + 1
    out = np.zeros((B, w.shape[0], Ho, Wo))
    for dy in range(k):
        for dx in range(k):
            patch = x[:, :, dy:dy + stride * Ho:stride, dx:dx + stride * Wo:stride]
            out += np.einsum("bihw,oi->bohw", patch, w[:, :, dy, dx])
    return out + b[None, :, None, None]


def group_norm(x, g, b, groups=32, eps=1e-6):
    B, C, H, W = x.shape
    xg = x.reshape(B, groups, -1)
    xg = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)
    return xg.reshape(B, C, H, W) * g[None, :, None, None] + b[None, :, None, None]


def swish(x):
    return x / (1 + np.exp(-x))


def forward(sd, x, t, ch, ch_mult, nrb, attn, res):
    """ε̂ for x (B, C, H, W) float64 and integer t (B,), with an official-layout state dict."""
    p = lambda n: sd[n]

    def block(name, h, temb):
        y = conv2d(swish(group_norm(h, p(f"{name}.norm1.weight"), p(f"{name}.norm1.bias"))),
                   p(f"{name}.conv1.weight"), p(f"{name}.conv1.bias"), pad=1)
        y = y + (swish(temb) @ p(f"{name}.temb_proj.weight").T + p(f"{name}.temb_proj.bias"))[:, :, None, None]
        y = swish(group_norm(y, p(f"{name}.norm2.weight"), p(f"{name}.norm2.bias")))
        y = conv2d(y, p(f"{name}.conv2.weight"), p(f"{name}.conv2.bias"), pad=1)
        if f"{name}.nin_shortcut.weight" in sd:
            h = conv2d(h, p(f"{name}.nin_shortcut.weight"), p(f"{name}.nin_shortcut.bias"))
        return h + y

    def attn_block(name, h):
        B, C, H, W = h.shape
        hn = group_norm(h, p(f"{name}.norm.weight"), p(f"{name}.norm.bias"))
        q, k, v = (conv2d(hn, p(f"{name}.{n}.weight"), p(f"{name}.{n}.bias")).reshape(B, C, H * W)
                   for n in ("q", "k", "v"))
        w = np.einsum("bci,bcj->bij", q, k) * C ** -0.5
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bcj,bij->bci", v, w).reshape(B, C, H, W)
        return h + conv2d(o, p(f"{name}.proj_out.weight"), p(f"{name}.proj_out.bias"))

    half = ch // 2
    f = np.exp(-math.log(10000) / (half - 1) * np.arange(half))
    emb = np.concatenate([np.sin(t[:, None] * f), np.cos(t[:, None] * f)], axis=1)
    temb = emb @ p("temb.dense.0.weight").T + p("temb.dense.0.bias")
    temb = swish(temb) @ p("temb.dense.1.weight").T + p("temb.dense.1.bias")

    hs = [conv2d(x, p("conv_in.weight"), p("conv_in.bias"), pad=1)]
    cur = res
    for lv in range(len(ch_mult)):
        for b in range(nrb):
            h = block(f"down.{lv}.block.{b}", hs[-1], temb)
            if cur in attn:
                h = attn_block(f"down.{lv}.attn.{b}", h)
            hs.append(h)
        if lv != len(ch_mult) - 1:
            xp = np.pad(hs[-1], ((0, 0), (0, 0), (0, 1), (0, 1)))
            hs.append(conv2d(xp, p(f"down.{lv}.downsample.conv.weight"),
                             p(f"down.{lv}.downsample.conv.bias"), stride=2))
            cur //= 2
    h = block("mid.block_1", hs[-1], temb)
    h = attn_block("mid.attn_1", h)
    h = block("mid.block_2", h, temb)
    for lv in reversed(range(len(ch_mult))):
        for b in range(nrb + 1):
            h = block(f"up.{lv}.block.{b}", np.concatenate([h, hs.pop()], axis=1), temb)
            if cur in attn:
                h = attn_block(f"up.{lv}.attn.{b}", h)
        if lv != 0:
            h = h.repeat(2, axis=2).repeat(2, axis=3)
            h = conv2d(h, p(f"up.{lv}.upsample.conv.weight"), p(f"up.{lv}.upsample.conv.bias"), pad=1)
            cur *= 2
    h = swish(group_norm(h, p("norm_out.weight"), p("norm_out.bias")))
    return conv2d(h, p("conv_out.weight"), p("conv_out.bias"), pad=1)
