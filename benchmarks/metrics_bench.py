"""Metrics benchmarks: FID-Inception feature throughput (random weights: speed only) and the
proxy feature network's training time / test accuracy, then a proxy evaluation of the
CIFAR-10 test images against reference statistics of the training images.

    python benchmarks/metrics_bench.py --data data_local/cifar10_jpeg_q75.npz --out /tmp/bench

Writes ``bench.json`` into ``--out``; the numbers are pasted into benchmarks/metrics.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from bidm_jax.metrics.features import FEATURE_KEYS, extract_features
from bidm_jax.metrics.networks import build_inception, device_summary


def inception_throughput(batch_size: int, precision: str, iters: int = 20,
                         n_extract: int = 10_000) -> dict:
    """Images/s of the jitted preprocess+Inception on a device-resident uint8 batch, and of
    ``extract_features`` (host batches in, host features out) on 10,000 images."""
    net = build_inception("adm", precision, npz_path=None)
    fn = jax.jit(lambda st, x: {k: v for k, v in
                                net.apply(nnx.merge(net.graphdef, st), x).items()})
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch_size, 32, 32, 3),
                                                         dtype=np.uint8))
    t0 = time.time()
    jax.block_until_ready(fn(net.state, x))
    compile_s = time.time() - t0
    times = []
    for _ in range(3):
        t0 = time.time()
        for _ in range(iters):
            out = fn(net.state, x)
        jax.block_until_ready(out)
        times.append((time.time() - t0) / iters)
    step = float(np.median(times))
    imgs = np.random.default_rng(1).integers(0, 256, (n_extract, 32, 32, 3), dtype=np.uint8)
    extract_features(net, imgs[:batch_size], batch_size, log_every=0)  # compile
    t0 = time.time()
    feats = extract_features(net, imgs, batch_size, log_every=0)
    e2e = time.time() - t0
    assert all(np.isfinite(feats[k]).all() for k in FEATURE_KEYS)
    return {"batch_size": batch_size, "precision": precision, "compile_s": compile_s,
            "step_ms": 1e3 * step, "device_images_per_s": batch_size / step,
            "extract_images": n_extract, "extract_s": e2e, "extract_images_per_s": n_extract / e2e}


def _torch_fid_inception(seed: int = 0):
    """pytorch-fid's FID InceptionV3 rebuilt from torchvision parts with random weights:
    FID average pools exclude padding, Mixed_7c max-pools, 1008-way fc."""
    import types

    import torch
    import torch.nn.functional as F
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                          num_classes=1008)

    def pool_avg(x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    def fwd_a(m, x):
        return torch.cat([m.branch1x1(x), m.branch5x5_2(m.branch5x5_1(x)),
                          m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x))),
                          m.branch_pool(pool_avg(x))], 1)

    def fwd_c(m, x):
        d = x
        for k in range(1, 6):
            d = getattr(m, f"branch7x7dbl_{k}")(d)
        return torch.cat([m.branch1x1(x), m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x))), d,
                          m.branch_pool(pool_avg(x))], 1)

    def fwd_e(m, x, use_max):
        t = m.branch3x3_1(x)
        d = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
        p = F.max_pool2d(x, 3, 1, 1) if use_max else pool_avg(x)
        return torch.cat([m.branch1x1(x), m.branch3x3_2a(t), m.branch3x3_2b(t),
                          m.branch3x3dbl_3a(d), m.branch3x3dbl_3b(d), m.branch_pool(p)], 1)

    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        getattr(net, n).forward = types.MethodType(fwd_a, getattr(net, n))
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        getattr(net, n).forward = types.MethodType(fwd_c, getattr(net, n))
    net.Mixed_7b.forward = types.MethodType(lambda m, x: fwd_e(m, x, False), net.Mixed_7b)
    net.Mixed_7c.forward = types.MethodType(lambda m, x: fwd_e(m, x, True), net.Mixed_7c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("bn.weight") or name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("bn.bias") or name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.startswith("fc."):
                t.copy_(0.02 * torch.randn(t.shape, generator=g))
    return net.eval()


def _torch_features(net, images: np.ndarray, batch: int = 250) -> dict:
    import torch
    import torch.nn.functional as F

    spatial = {}
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: spatial.__setitem__("x", o))
    outs = {"pool": [], "spatial": [], "is_logits": []}
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).cuda().permute(0, 3, 1, 2).float() / 255
            x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
            for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                      "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                      "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                      "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(net, n)(x)
            pool = x.mean(dim=(2, 3))
            outs["pool"].append(pool.cpu().numpy())
            outs["is_logits"].append((pool @ net.fc.weight.T).cpu().numpy())
            sp = spatial["x"][:, :7].permute(0, 2, 3, 1).reshape(pool.shape[0], -1)
            outs["spatial"].append(sp.cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def torch_crosscheck(data: str, n: int = 2000) -> dict:
    """Same random weights in torch (pytorch-fid structure) and in our Flax port via the .pth
    converter; features and FIDs on real CIFAR-10 images compared (pytorch_fid preprocessing,
    full fp32: TF32 off in torch, HIGHEST precision in JAX)."""
    import torch

    from bidm_jax.data.cifar10 import load_cifar10
    from bidm_jax.metrics import weights
    from bidm_jax.metrics.fid import fid_from_features
    from bidm_jax.metrics.inception_score import inception_score

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = _torch_fid_inception().cuda()
    pth = "/tmp/bench_random_fid_inception.pth"
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, pth)
    npz = weights.convert_pth(pth, "/tmp/bench_random_fid_inception.npz")
    ours_net = build_inception("pytorch_fid", "highest", npz_path=npz)
    x, _ = load_cifar10("train", data)
    a, b = x[:n], x[n:2 * n]
    t = {k: np.concatenate([u, v]) for (k, u), v in
         zip(_torch_features(net, a).items(), _torch_features(net, b).values())}
    o = extract_features(ours_net, np.concatenate([a, b]), 500, log_every=0)
    res = {"n_per_set": n}
    for k in FEATURE_KEYS:
        diff = np.abs(o[k] - t[k])
        res[f"{k}_max_abs_diff"] = float(diff.max())
        res[f"{k}_max_abs_value"] = float(np.abs(t[k]).max())
    for k, name in (("pool", "fid"), ("spatial", "sfid")):
        ft = fid_from_features(t[k][:n], t[k][n:])
        fo = fid_from_features(o[k][:n], o[k][n:])
        res[f"{name}_torch"], res[f"{name}_ours"], res[f"{name}_abs_diff"] = ft, fo, abs(ft - fo)
    it, io = inception_score(t["is_logits"], 5000), inception_score(o["is_logits"], 5000)
    res["is_torch"], res["is_ours"], res["is_abs_diff"] = it, io, abs(it - io)
    return res


def proxy_pipeline(data: str, workdir: str, smoke: bool = False) -> dict:
    from bidm_jax.data.cifar10 import load_cifar10
    from bidm_jax.metrics.config import get_eval_config
    from bidm_jax.metrics.evaluate import run_eval, run_ref_stats, run_train_proxy
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict({"path": data, "source": "auto"})
    c.eval = get_eval_config()
    c.eval.features = "proxy"
    c.eval.num_samples = 0
    if smoke:  # CPU dry run of the code path only
        c.eval.update(dict(proxy_steps=3, proxy_width=4, proxy_batch_size=64, ref_num_images=300,
                           pr_num_images=100, kid_subsets=2, kid_subset_size=50))
    t0 = time.time()
    train = run_train_proxy(c, workdir)
    train["wall_s"] = time.time() - t0
    t0 = time.time()
    ref = run_ref_stats(c, workdir)
    ref["wall_s"] = time.time() - t0
    test_x, _ = load_cifar10("test", data)
    test_x = test_x[:200] if smoke else test_x
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    np.savez(os.path.join(workdir, "samples", "samples.npz"), arr_0=test_x)
    t0 = time.time()
    ev = run_eval(c, workdir)
    ev["wall_s"] = time.time() - t0
    return {"train_proxy": train, "ref_stats": ref, "eval_test_vs_train": ev}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip_inception", action="store_true")
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the code runs")
    args = ap.parse_args()
    logging.set_verbosity(logging.INFO)
    os.makedirs(args.out, exist_ok=True)

    def dump():  # after every stage, so a time-out still leaves the finished parts
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)

    res = {"device": device_summary(), "jax": jax.__version__,
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if not args.skip_inception:
        if args.smoke:
            res["inception"] = [inception_throughput(4, "highest", 1, 8)]
        else:
            res["inception"] = [inception_throughput(500, "highest"),
                                inception_throughput(500, "default")]
        print(json.dumps(res["inception"], indent=1), flush=True)
        dump()
    if not args.skip_torch:
        res["torch_crosscheck"] = torch_crosscheck(args.data)
        print(json.dumps(res["torch_crosscheck"], indent=1), flush=True)
        dump()
    res["proxy"] = proxy_pipeline(args.data, os.path.join("/tmp", "bench_metrics_work"),
                                  args.smoke)
    dump()
    print(json.dumps(res["proxy"], indent=1, default=str), flush=True)


if __name__ == "__main__":
    main()
