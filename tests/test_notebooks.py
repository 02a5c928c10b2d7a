"""The notebooks under notebooks/: each .ipynb is in sync with its jupytext py:percent twin and
holds no outputs, the README links each to Colab through one repository placeholder, and all
of them execute top to bottom at tiny sizes in one kernel (the Colab install cells, tagged
``skip-ci``, are left out; a cell after each ``parameters`` cell sets the tiny values)."""
import glob
import io
import json
import os
import re
import time

import numpy as np
import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
REPO_URL_LINE = re.compile(r'^REPO_URL = "(?P<url>[^"]+)"', re.M)


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ())))
            for c in nb.cells]


def test_every_notebook_has_its_text_twin_in_sync_and_no_outputs():
    assert NAMES == ["01_quickstart", "02_bidm_cifar10", "03_packed_inference",
                     "04_more_methods"]
    for name in NAMES:
        ipynb = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
        text = jupytext.read(os.path.join(NOTEBOOK_DIR, f"{name}.py"))
        assert _cells(ipynb) == _cells(text), (
            f"notebooks/{name}.ipynb and .py differ: run `jupytext --sync notebooks/{name}.py`")
        assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
        for cell in ipynb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"notebooks/{name}.ipynb holds outputs: clear them before committing")
        tags = [c[2] for c in _cells(ipynb)]
        assert ("skip-ci",) in tags and ("parameters",) in tags, name
        install = next(c for c in ipynb.cells if "skip-ci" in c.metadata.get("tags", ()))
        assert REPO_URL_LINE.search(install.source), f"{name}: REPO_URL at the install cell's top"


def test_readme_links_each_notebook_to_colab_through_one_repository_url():
    readme = open(os.path.join(ROOT, "README.md")).read()
    urls = set()
    for name in NAMES:
        ipynb = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
        install = next(c for c in ipynb.cells if "skip-ci" in c.metadata.get("tags", ()))
        urls.add(REPO_URL_LINE.search(install.source)["url"])
    assert len(urls) == 1, f"the notebooks name different repositories: {urls}"
    github = urls.pop().removeprefix("https://github.com/")
    for name in NAMES:
        link = f"https://colab.research.google.com/github/{github}/blob/main/notebooks/{name}.ipynb"
        assert link in readme, f"README.md lacks the Colab link of {name}"


# --- execution ---------------------------------------------------------------------------

# The smallest UNets the methods accept (two levels, no attention), a handful of steps.
QUICKSTART_TINY = {
    "data.image_size": 8, "model.resolution": 8, "model.ch": 32, "model.ch_mult": (1, 2),
    "model.num_res_blocks": 1, "model.attn_resolutions": (), "diffusion.sample_steps": 2,
    "train.num_steps": 2, "train.warmup_steps": 1, "train.batch_size": 8, "train.log_every": 1,
    "distill.num_steps": 2, "distill.batch_size": 8, "sample.num_samples": 4,
    "sample.batch_size": 4, "sample.grid_size": 4, "ckpt.save_every": 2}
CIFAR_TINY = {
    "model.ch": 32, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
    "model.attn_resolutions": (), "model.dropout": 0.0, "diffusion.sample_steps": 2,
    "train.batch_size": 8, "train.log_every": 1, "sample.num_samples": 8,
    "sample.batch_size": 8, "sample.grid_size": 8, "eval.batch_size": 16,
    "eval.pr_num_images": 16, "eval.pr_block": 32, "eval.kid_subsets": 2,
    "eval.kid_subset_size": 4, "eval.is_split_size": 8, "eval.proxy_width": 4,
    "eval.proxy_embed_dim": 16, "eval.proxy_spatial_channels": 2,
    "eval.proxy_batch_size": 16, "eval.proxy_warmup_steps": 1, "eval.proxy_log_every": 1}
PIXEL_TINY = {
    "data.dataset": "digits", "data.image_size": 8, "data.random_flip": False,
    "model.resolution": 8, "model.ch": 32, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
    "model.attn_resolutions": (), "model.dropout": 0.0, "diffusion.loss_reduction": "mean",
    "diffusion.sample_steps": 2, "train.batch_size": 8, "train.log_every": 1,
    "sample.num_samples": 4, "sample.batch_size": 4, "sample.grid_size": 4}
LATENT_TINY = {
    "data.image_size": 8, "first_stage.ch": 32, "first_stage.ch_mult": (1,),
    "first_stage.num_res_blocks": 1, "first_stage.n_embed": 16, "model.resolution": 8,
    "model.ch": 32, "model.ch_mult": (1,), "model.num_res_blocks": 1,
    "model.attn_resolutions": (), "diffusion.sample_steps": 2, "train.batch_size": 4,
    "train.log_every": 1, "sample.num_samples": 4, "sample.batch_size": 4,
    "sample.grid_size": 4}


def ci_parameters(name: str, work: str, cifar: str) -> str:
    """The code that follows the ``parameters`` cell of notebook ``name`` in CI."""
    values = {
        "01_quickstart": {"OVERRIDES": QUICKSTART_TINY},
        "02_bidm_cifar10": {"DATA": cifar, "TEACHER_STEPS": 2, "DISTILL_STEPS": 2,
                            "NUM_SAMPLES": 8, "FEATURES": "proxy", "PROXY_STEPS": 2,
                            "SIZE": CIFAR_TINY},
        "03_packed_inference": {"SIZE": QUICKSTART_TINY, "NUM_IMAGES": 4, "SPEED_BATCH": 4,
                                "SPEED_REPEATS": 1},
        "04_more_methods": {"MODEL": PIXEL_TINY, "LATENT": LATENT_TINY, "TEACHER_STEPS": 2,
                            "STUDENT_STEPS": 2, "LATENT_STEPS": 2},
    }[name]
    values["WORKDIR"] = os.path.join(work, name)
    return "# CI: tiny sizes\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())


def write_tiny_cifar(path: str) -> None:
    """A CIFAR-10-shaped JPEG npz (the project's format) of label-dependent stripes."""
    from PIL import Image

    arrays = {}
    for split, n, seed in (("train", 40, 0), ("test", 20, 1)):
        rng = np.random.default_rng(seed)
        labels = (np.arange(n) % 10).astype(np.uint8)
        stripes = np.sin(np.arange(32)[:, None, None] * (labels[:, None, None, None] + 1) / 5)
        imgs = np.clip(120 + 60 * stripes + rng.normal(0, 10, (n, 32, 32, 3)), 0, 255)
        bufs = []
        for im in imgs.astype(np.uint8):
            b = io.BytesIO()
            Image.fromarray(im).save(b, format="JPEG", quality=75)
            bufs.append(np.frombuffer(b.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(bufs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in bufs]).astype(np.int64)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)


# Executed by default (the suite's time budget): the quickstart notebook and the packed
# inference one, which reuses its run. ``pytest tests/test_notebooks.py --notebooks all``
# executes every notebook (each distillation is one XLA compile of ~30 s on 2 CPU cores).
DEFAULT_EXECUTED = ("01_quickstart", "03_packed_inference")


def executed_names(option: str) -> list[str]:
    if option in ("", "default"):
        return [n for n in NAMES if n in DEFAULT_EXECUTED]
    if option == "all":
        return list(NAMES)
    names = [n for n in option.split(",") if n]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"--notebooks: unknown notebooks {unknown}; valid: {NAMES}")
    return names


def combined_notebook(work: str, cifar: str, names=None):
    """Every notebook's cells in order, for one kernel: the ``skip-ci`` cells dropped, the CI
    parameters after each ``parameters`` cell, the namespace reset between notebooks (the
    imported modules, and so jax's compiled programs, stay)."""
    out = nbformat.v4.new_notebook()
    out.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}
    for name in (NAMES if names is None else names):
        nb = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
        reset = nbformat.v4.new_code_cell(
            f"get_ipython().run_line_magic('reset', '-f')\nimport os\nos.chdir({ROOT!r})")
        cells = [reset]
        for cell in nb.cells:
            tags = cell.metadata.get("tags", ())
            if "skip-ci" in tags or cell.cell_type != "code":
                continue
            cells.append(cell)
            if "parameters" in tags:
                cells.append(nbformat.v4.new_code_cell(ci_parameters(name, work, cifar)))
        for cell in cells:
            cell.metadata["notebook"] = name
        out.cells.extend(cells)
    return out


def _seconds(cell) -> float:
    from datetime import datetime

    ex = cell.metadata.get("execution", {})
    start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def test_notebooks_execute_top_to_bottom_at_tiny_sizes(tmp_path, request):
    pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    import jax
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    cifar = str(tmp_path / "tiny_cifar.npz")
    write_tiny_cifar(cifar)
    nb = combined_notebook(str(tmp_path / "runs"), cifar,
                           executed_names(request.config.getoption("--notebooks")))
    cache = jax.config.jax_compilation_cache_dir or str(tmp_path / "xla_cache")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           # one CPU device; LLVM -O0 as the rest of the suite (compiles ~3x faster)
           "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
           "MPLBACKEND": "agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}, record_timing=True)
    t0 = time.time()
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        failed = next((c for c in nb.cells if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", ()))), None)
        where = failed.metadata["notebook"] if failed is not None else "?"
        pytest.fail(f"notebooks/{where}: a cell failed:\n{e}", pytrace=False)
    per_notebook, slowest = {}, []
    for cell in nb.cells:
        name, seconds = cell.metadata["notebook"], _seconds(cell)
        per_notebook[name] = per_notebook.get(name, 0.0) + seconds
        slowest.append((seconds, name, cell.source.strip().splitlines()[0][:60]))
    print(json.dumps({"kernel_total_s": round(time.time() - t0, 1),
                      **{k: round(v, 1) for k, v in per_notebook.items()}}))
    for seconds, name, first_line in sorted(slowest, reverse=True)[:12]:
        print(f"{seconds:7.1f} s  {name}  {first_line}")
