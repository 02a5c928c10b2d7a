"""Sample files of a streamed, resumable sampling run (``--mode sample``).

Layout under ``{workdir}/samples``:

* ``samples{_tag}.parts/``: one ``{start:08d}_{count}.npy`` per finished batch (uint8
  (count, H, W, 3), written to a temporary name and renamed, so a file that exists is whole)
  and ``plan.json``, what the batches were made with (seed, shapes, batch, sampler, model);
* ``samples{_tag}.npz``: ``arr_0`` uint8 (N, H, W, 3), ADM's format, assembled from the
  shards by streaming them into the zip member (one shard in memory at a time); the parts
  folder is removed afterwards;
* ``grid{_tag}.png``: the first ``sample.grid_size`` images.

A killed run started again with the same plan skips the shards that exist (the noise of
sample i is a function of (seed, i) only, so the remaining batches are those the first run
would have made). A different plan (another checkpoint, sampler or batch) is refused naming
the field, since mixing shards would mix models.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from bidm_jax import logs
from bidm_jax.errors import BadInput, CorruptFile
from bidm_jax.npy_stream import NpzArrayWriter

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def tag_suffix(tag: str) -> str:
    """``sample.tag`` -> the file-name suffix: '' -> '', 'ddim100' -> '_ddim100'."""
    if not tag:
        return ""
    if not _TAG.match(tag):
        raise BadInput(f"sample.tag={tag!r} must be letters, digits, '.', '_' or '-' (at most "
                       "64, not starting with a punctuation mark): it names files")
    return f"_{tag}"


def samples_npz(directory: str, tag: str = "") -> str:
    return os.path.join(directory, f"samples{tag_suffix(tag)}.npz")


class ShardStore:
    """The parts folder of one tagged sample set (process 0 only: it alone writes)."""

    def __init__(self, directory: str, tag: str, plan: dict):
        self.directory, self.suffix = directory, tag_suffix(tag)
        self.parts = os.path.join(directory, f"samples{self.suffix}.parts")
        self.plan = json.loads(json.dumps(plan, default=str))  # what JSON gives back
        os.makedirs(self.parts, exist_ok=True)
        plan_path = os.path.join(self.parts, "plan.json")
        if os.path.exists(plan_path):
            try:
                with open(plan_path) as f:
                    old = json.load(f)
            except ValueError as e:
                raise CorruptFile(f"{plan_path} does not parse ({e}); delete {self.parts} to "
                                  "sample from scratch") from None
            diff = [k for k in sorted(set(old) | set(self.plan)) if old.get(k) != self.plan.get(k)]
            if diff:
                k = diff[0]
                raise BadInput(
                    f"{self.parts} holds the batches of an interrupted run made with {k}="
                    f"{old.get(k)!r}, now {self.plan.get(k)!r}; finish it with the same "
                    f"settings, delete the folder, or give this run another sample.tag")
        else:
            tmp = plan_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.plan, f, indent=1)
            os.replace(tmp, plan_path)

    def shard(self, start: int, count: int) -> str:
        return os.path.join(self.parts, f"{start:08d}_{count}.npy")

    def has(self, start: int, count: int) -> bool:
        """Whether batch [start, start + count) is on disk, whole."""
        path = self.shard(start, count)
        if not os.path.exists(path):
            return False
        try:
            return np.load(path, mmap_mode="r").shape[0] == count
        except Exception:  # an unreadable shard is made again
            return False

    def save(self, start: int, images: np.ndarray) -> None:
        path = self.shard(start, len(images))
        tmp = path + ".tmp.npy"
        np.save(tmp, np.ascontiguousarray(images, np.uint8))
        os.replace(tmp, path)

    def assemble(self, starts_counts: list[tuple[int, int]], grid_size: int) -> str:
        """Streams the shards, in order, into ``samples{_tag}.npz`` (arr_0), writes the grid
        and removes the parts folder; returns the npz path."""
        first = np.load(self.shard(*starts_counts[0]), mmap_mode="r")
        total = sum(c for _, c in starts_counts)
        path = os.path.join(self.directory, f"samples{self.suffix}.npz")
        writer = NpzArrayWriter(path, (total,) + first.shape[1:], np.uint8)
        grid = []
        try:
            for start, count in starts_counts:
                block = np.load(self.shard(start, count))
                writer.write(block)
                if sum(len(g) for g in grid) < grid_size:
                    grid.append(block[:grid_size - sum(len(g) for g in grid)])
            writer.close()
        except BaseException:
            writer.abort()
            raise
        write_grid(self.directory, np.concatenate(grid), self.suffix)
        shutil.rmtree(self.parts)
        return path


def write_grid(directory: str, images: np.ndarray, suffix: str = "") -> str:
    """``grid{suffix}.png`` of ``images`` (upscaled to >= 64 px cells)."""
    path = os.path.join(directory, f"grid{suffix}.png")
    upscale = max(1, 64 // images.shape[1])
    logs.save_png(path, logs.image_grid(images), upscale=upscale)
    return path
