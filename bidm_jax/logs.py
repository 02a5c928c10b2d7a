"""Progress line, TensorBoard scalars/images (tensorboardX: no TensorFlow needed), a JSONL of
metrics, and PNG sample grids. Only process 0 writes."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from absl import logging


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) → one uint8 (rows·(H+pad)+pad, cols·(W+pad)+pad, C) mosaic."""
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def save_png(path: str, image: np.ndarray, upscale: int = 1) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
    """TensorBoard event files + ``metrics.jsonl`` under ``{workdir}/{name}``.

    ``keep_until``: drop the rows of ``metrics.jsonl`` past this step first (a run resumed
    from step s logs s+1… again; without this the file would hold those steps twice)."""

    def __init__(self, workdir: str, name: str = "logs", keep_until: int | None = None):
        self.active = jax.process_index() == 0
        self.dir = os.path.join(workdir, name)
        self._tb = None
        if self.active:
            os.makedirs(self.dir, exist_ok=True)
            if keep_until is not None:
                _truncate_jsonl(os.path.join(self.dir, "metrics.jsonl"), keep_until)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self.dir)
            self._jsonl = open(os.path.join(self.dir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self.active:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._jsonl.close()


def _row_step(line: str) -> int | None:
    """The step of a JSONL row; None for a row cut short (a run killed while writing it)."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


def _truncate_jsonl(path: str, keep_until: int) -> None:
    """Rewrites ``path`` (atomically) without the rows whose ``step`` is past ``keep_until``
    and without a torn last row."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    steps = [_row_step(ln) if ln.endswith("\n") else None for ln in lines]
    kept = [ln for ln, s in zip(lines, steps) if s is not None and s <= keep_until]
    if len(kept) == len(lines):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class Progress:
    """Logs ``step a/b | loss | steps/s | img/s | ETA`` every ``every`` steps."""

    def __init__(self, total: int, start: int, batch: int, every: int):
        self.total, self.batch, self.every = total, batch, every
        self._t, self._s = time.time(), start

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def rate(self, step: int) -> float:
        now = time.time()
        rate = (step - self._s) / max(now - self._t, 1e-9)
        self._t, self._s = now, step
        return rate

    def line(self, step: int, rate: float, metrics: dict) -> str:
        parts = [f"step {step}/{self.total}"]
        parts += [f"{k} {v:.5g}" for k, v in metrics.items()]
        parts += [f"{rate:.2f} steps/s", f"{rate * self.batch:.1f} img/s",
                  f"ETA {format_duration((self.total - step) / max(rate, 1e-9))}"]
        msg = " | ".join(parts)
        logging.info(msg)
        return msg
