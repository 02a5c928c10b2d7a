"""Results of the reduced-scale CIFAR-10 reproduction: ``results.json``, ``README.md`` and a
sample PNG, from the workdir the driver filled. NumPy and PIL only (no device work).

Published numbers quoted here are BiDM's (NeurIPS 2024) Table 1 (CIFAR-10, DDIM 100 steps,
50,000 samples, Inception features) and Table 3 (LDM-4 LSUN-Bedrooms ablation); they are
context for the ordering only and are never compared with the proxy numbers directly.
"""
from __future__ import annotations

import json
import os

import numpy as np

# BiDM Table 1: FID on CIFAR-10 (W1A1 unless noted).
PAPER_CIFAR_FID = {"teacher": 5.54, "bidm": 81.65, "xnor": 113.36, "reactnet": 231.55,
                   "xnor++": 251.14, "reste": 394.29, "dorefa": 397.60}
# BiDM Table 3 (LDM-4 Bedrooms): vanilla XNOR, +TBS, +SPD, BiDM.
PAPER_ABLATION_FID = {"xnor": 106.62, "xnor_tbs": 35.23, "xnor_spd": 40.62, "bidm": 22.74}
PAPER_RATIO = PAPER_CIFAR_FID["bidm"] / PAPER_CIFAR_FID["xnor"]  # 0.72
# BinaryDM Table 1: FID on CIFAR-10 at W1A4 (LSQ at W2A4).
PAPER_W1A4_FID = {"binarydm": 87.77, "binarydm_baseline": 100.17, "lsq_w2a4": 137.75}
# Q-DM (methods.md §4.2): W4A4 CIFAR-10 FID 5.17 (1000-step DDPM); the LSQ baseline's number
# is not available, only that Q-DM beats it by a large margin.
PAPER_W4A4_FID = {"qdm_w4a4": 5.17}
W4A4_CLAIMED_ORDER = ["qdm_w4a4", "lsq_w4a4"]

LABELS = {"teacher": "FP teacher", "bidm": "BiDM (TBS + SPD)", "xnor": "XNOR",
          "reactnet": "ReActNet", "xnor++": "XNOR++", "reste": "ReSTE", "dorefa": "DoReFa",
          "bbcu": "BBCU", "xnor_tbs": "XNOR + TBS", "xnor_spd": "XNOR + SPD",
          "binarydm": "BinaryDM (EBB + LRM)", "binarydm_baseline": "BinaryDM Baseline",
          "lsq_w2a4": "LSQ", "qdm_w4a4": "Q-DM (TaQ + NeM)", "lsq_w4a4": "LSQ (Q-DM's baseline)",
          "efficientdm_w4a4": "EfficientDM (data-free)",
          # diagnostics (DIAGNOSTICS of the config)
          "xnor_nok": "XNOR without K", "xnor_unitsc": "XNOR + unit shortcut",
          "xnor_rprelu": "XNOR + RPReLU", "xnor_bias": "XNOR keeping the bias",
          "bidm_nok": "BiDM without k * A", "reactnet_box": "ReActNet + XNOR's K"}
METRICS = ("proxy_fid", "proxy_sfid", "proxy_is", "proxy_precision", "proxy_recall",
           "proxy_kid")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (N, H, W, C); identical images give inf."""
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / err)


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_samples(path: str) -> np.ndarray | None:
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return z["arr_0"]


def bits(dist: dict) -> str:
    """W/A bit widths of a student from its distill.json (W1A1 for the BiDM-table methods)."""
    if dist.get("bits_a") is None:
        return "W1A1"
    return f"W{dist.get('bits_w') or 1}A{dist['bits_a']}"


def collect(workdir: str, models: list[str], sample_files: dict[str, str], budgets: dict,
            job_seconds: dict[str, float]) -> list[dict]:
    """One entry per model: method, bits, budget, metrics, PSNR vs the teacher, timings."""
    teacher = load_samples(sample_files["teacher"])
    entries = []
    for name in models:
        d = os.path.join(workdir, name)
        ev = load_json(os.path.join(d, "eval", "metrics.json"))
        final = load_json(os.path.join(d, "final.json"))
        dist = load_json(os.path.join(d, "distill.json"))
        imgs = load_samples(sample_files[name])
        entry = {"model": name, "label": LABELS.get(name, name),
                 "method": "fp" if name == "teacher" else dist.get("method", ""),
                 "bits": "W32A32" if name == "teacher" else bits(dist),
                 "tbs": bool(dist.get("tbs", False)), "distill_loss": dist.get("loss"),
                 "budget": budgets[name],
                 "status": "ok" if ev and imgs is not None else "failed",
                 "num_samples": int(ev.get("num_samples", 0)),
                 "metrics": {k: ev[k] for k in METRICS if k in ev},
                 "final_train_loss": final.get("loss"),
                 "train_seconds": final.get("train_seconds"),
                 "sample_seconds": final.get("sample_seconds"),
                 "job_seconds": job_seconds.get(name),
                 "paper_cifar10_fid": {**PAPER_W4A4_FID, **PAPER_W1A4_FID,
                                       **PAPER_CIFAR_FID}.get(name)}
        if name != "teacher" and imgs is not None and teacher is not None:
            p = psnr(imgs, teacher[:len(imgs)])
            entry["psnr_vs_teacher_db"] = float(np.mean(np.minimum(p, 100.0)))
        entries.append(entry)
    return entries


def ordering(entries: list[dict], names: list[str]) -> list[str]:
    """``names`` that have a proxy FID, best (lowest) first."""
    have = [e for e in entries if e["model"] in names and "proxy_fid" in e["metrics"]]
    return [e["model"] for e in sorted(have, key=lambda e: e["metrics"]["proxy_fid"])]


def summary(entries: list[dict]) -> dict:
    """Orderings found vs the paper's, and BiDM / XNOR proxy-FID ratio (paper: 0.72)."""
    fid = {e["model"]: e["metrics"].get("proxy_fid") for e in entries}
    main = [m for m in PAPER_CIFAR_FID if m != "teacher"]
    abl = list(PAPER_ABLATION_FID)
    ratio = (fid["bidm"] / fid["xnor"]) if fid.get("bidm") and fid.get("xnor") else None
    return {"cifar10_ordering_found": ordering(entries, main),
            "cifar10_ordering_paper": sorted(main, key=PAPER_CIFAR_FID.get),
            "ablation_ordering_found": ordering(entries, abl),
            "ablation_ordering_paper": sorted(abl, key=PAPER_ABLATION_FID.get),
            "w1a4_ordering_found": ordering(entries, list(PAPER_W1A4_FID)),
            "w1a4_ordering_paper": sorted(PAPER_W1A4_FID, key=PAPER_W1A4_FID.get),
            "w4a4_ordering_found": ordering(entries, W4A4_CLAIMED_ORDER),
            "w4a4_ordering_paper": W4A4_CLAIMED_ORDER,
            "bidm_over_xnor_proxy_fid": ratio, "paper_bidm_over_xnor_fid": round(PAPER_RATIO, 3)}


def sample_sheet(path: str, rows: list[tuple[str, np.ndarray]], per_row: int = 12,
                 upscale: int = 2) -> int:
    """PNG: one row of the first ``per_row`` samples per model (same x_T in every column).
    Returns the file size in bytes."""
    from PIL import Image

    h, w = rows[0][1].shape[1:3]
    pad = 2
    sheet = np.full((len(rows) * (h + pad) + pad, per_row * (w + pad) + pad, 3), 255, np.uint8)
    for r, (_, imgs) in enumerate(rows):
        for c, img in enumerate(imgs[:per_row]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            sheet[y:y + h, x:x + w] = img
    im = Image.fromarray(sheet)
    im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    im.save(path, optimize=True)
    return os.path.getsize(path)


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(entries: list[dict]) -> str:
    """Markdown table of every model's metrics."""
    head = ("| model | bits | proxy FID ↓ | proxy sFID ↓ | proxy IS ↑ | precision ↑ | recall ↑ | "
            "PSNR vs teacher (dB) ↑ | final loss | train s | paper FID (Table 1) |")
    lines = [head, "|" + "---|" * 11]
    for e in entries:
        m = e["metrics"]
        if e["status"] != "ok":
            lines.append(f"| {e['label']} | {e['bits']} | failed (see logs) |" + " |" * 8)
            continue
        lines.append(
            f"| {e['label']} | {e['bits']} | {_fmt(m.get('proxy_fid'))} | "
            f"{_fmt(m.get('proxy_sfid'))} | {_fmt(m.get('proxy_is'))} | "
            f"{_fmt(m.get('proxy_precision'), 3)} | {_fmt(m.get('proxy_recall'), 3)} | "
            f"{_fmt(e.get('psnr_vs_teacher_db'))} | {_fmt(e.get('final_train_loss'), 1)} | "
            f"{_fmt(e.get('train_seconds'), 0)} | {_fmt(e.get('paper_cifar10_fid'))} |")
    return "\n".join(lines)


def write_readme(path: str, results: dict) -> None:
    """The human-readable results page next to results.json."""
    s, b, info = results["summary"], results["budget"], results["run"]
    ratio = s["bidm_over_xnor_proxy_fid"]
    text = f"""# Reduced-scale CIFAR-10 reproduction of the W1A1, W1A4 and W4A4 comparisons

{info['size_note']}

- **Command:** `{info['command']}`
- **Machine:** {info['machine']}; jax {info['jax_version']}
- **Date:** {info['date']}; whole run {info['total_minutes']:.1f} min
- **Data:** {info['data']}
- **Teacher:** the DDIM CIFAR-10 UNet ({info['teacher_params']}), trained here from scratch
  for {b['teacher_steps']:,} steps at batch {b['teacher_batch']} (Adam lr {b['teacher_lr']},
  {b['teacher_warmup']} warm-up steps, EMA {b['teacher_ema']}), data parallel over
  {info['num_devices']} device(s): {info['teacher_minutes']:.1f} min of training.
- **Students (identical budget):** {b['student_steps']:,} iterations at batch
  {b['student_batch']}, Adam lr {b['student_lr']} constant (BiDM paper value), grad clip 1.0,
  EMA {b['student_ema']}; all start from the same teacher; {info['students_note']}.
- **Sampling:** {b['num_samples']:,} images per model, {b['sample_steps']}-step DDIM, η = 0,
  the **same** initial noise for every model (seed {info['sample_seed']}).
- **Metrics:** proxy features ({info['feature_network']}), **not** Inception: FID, sFID, IS,
  precision/recall (k = 3) against the CIFAR-10 training set ({info['reference']}). They
  rank models; they are not comparable with published FIDs. PSNR vs teacher: mean per-image
  PSNR between a student's and the teacher's final images from the same noise.

{table(results['models'])}

## What came out

- Ordering by proxy FID (W1A1 methods of BiDM Table 1): found
  {' < '.join(s['cifar10_ordering_found']) or '–'}; paper
  {' < '.join(s['cifar10_ordering_paper'])}.
- Ablation ordering (BiDM Table 3, LSUN-Bedrooms in the paper): found
  {' < '.join(s['ablation_ordering_found']) or '–'}; paper
  {' < '.join(s['ablation_ordering_paper'])}.
- BiDM / XNOR proxy-FID ratio: {_fmt(ratio, 3)} (paper, CIFAR-10 FID: {s['paper_bidm_over_xnor_fid']}).
- W1A4 ordering (BinaryDM Table 1: BinaryDM, Baseline, LSQ W2A4): found
  {' < '.join(s.get('w1a4_ordering_found', [])) or '–'}; paper
  {' < '.join(s.get('w1a4_ordering_paper', []))}.
- W4A4 ordering (Q-DM's claim that it beats its LSQ baseline; Q-DM FID 5.17 with 1000-step
  DDPM in the paper): found {' < '.join(s.get('w4a4_ordering_found', [])) or '–'}; paper
  {' < '.join(s.get('w4a4_ordering_paper', []))}.
{info.get('findings', '')}
## Samples

Each row is one model, each column one initial noise x_T shared by all rows (first row: FP
teacher).

![samples](samples.png)

Per-model logs, checkpoints and sample files stay in the workdir
(`{info['workdir_name']}/<model>/`); `results.json` holds every number above.
"""
    with open(path, "w") as f:
        f.write(text)
