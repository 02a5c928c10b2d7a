"""Bad inputs through the whole command line, in this process (``bidm_jax.main.cli``: flag
parsing, the run, the error report): each gives its exit code and one line, printed once,
and leaves the workdir's files as they were (docs/reliability.md). Also the config a workdir
remembers, and a diverging run."""
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from bidm_jax import saved_config
from bidm_jax.configlib import resolve_config, sibling
from bidm_jax.main import cli
from tests.conftest import ROOT
from tests.fault_helpers import CONFIG, digest, error_lines, finished_steps, train_args


def run_cli(capsys, argv):
    """(exit code, the one error line or None); fails if an error is printed twice or with
    a traceback."""
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) <= 1 and "Traceback" not in err, err[-3000:]
    return code, (lines[0] if lines else None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained 4 steps (checkpoints 2 and 4) with its saved config."""
    work = str(tmp_path_factory.mktemp("trained"))
    assert cli(train_args(work, 4)) == 0
    assert finished_steps(work) == [2, 4] and os.path.isfile(saved_config.path(work))
    return work


@pytest.fixture
def copy_of(trained, tmp_path):
    work = str(tmp_path / "work")
    shutil.copytree(trained, work)
    return work


def test_config_errors(trained, tmp_path, capsys):
    """Unknown fields, a missing or broken config file, a bad override value, no config at
    all: exit code 2, one line naming the file and line or the field, workdir untouched."""
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config():\n    c = dict(\n    return c\n")
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return undefined_name\n")
    before = digest(trained)
    cases = [
        (["--config", CONFIG, "--config.train.nosuch=1"],
         "unknown config field train.nosuch (--config.train.nosuch); train has: adam_b1"),
        (["--config", CONFIG, "--config.trian.lr=1"],
         "unknown config field trian.lr (--config.trian.lr); did you mean train?"),
        (["--config", str(tmp_path / "nosuch.py")],
         f"config file '{tmp_path}/nosuch.py' not found"),
        (["--config", str(syntax)], f"config file {syntax}, line 2: "),
        (["--config", str(raising)],
         f"config file {raising}, line 2: NameError: name 'undefined_name' is not defined"),
        (["--config", CONFIG, "--config.train.lr=fast"],
         "flag --config.train.lr=fast: could not convert string to float: 'fast'"),
        (["--config", CONFIG, "--config.export.tpu_operand=int2"],
         "export.tpu_operand='int2' is invalid; valid choices: auto, "),
    ]
    for args, message in cases:
        code, line = run_cli(capsys, ["bidm_jax", *args, "--workdir", trained, "--mode", "train"])
        assert code == 2 and line and message in line, (args, line)
    empty = str(tmp_path / "empty")
    code, line = run_cli(capsys, ["bidm_jax", "--workdir", empty, "--mode", "train"])
    assert code == 2 and "--config is required" in line and "no saved config" in line
    assert digest(trained) == before and not os.path.exists(empty)


def _truncate_largest(ckpt: str) -> None:
    files = [os.path.join(d, f) for d, _, fs in os.walk(ckpt) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 3)


@pytest.mark.parametrize("damage,mode", [("truncated", "sample"), ("truncated", "train"),
                                         ("metadata", "sample")])
def test_corrupt_checkpoint(copy_of, capsys, damage, mode):
    """A truncated array file or garbage metadata in the latest checkpoint: exit code 2, one
    line naming the checkpoint and what is wrong, with the step to fall back to; sampling and
    resuming both stop before writing anything."""
    ckpt = os.path.join(copy_of, "checkpoints", "4")
    if damage == "truncated":
        _truncate_largest(ckpt)
    else:
        with open(os.path.join(ckpt, "default", "_METADATA"), "w") as f:
            f.write("{not json")
    before = digest(copy_of)
    argv = ["bidm_jax", "--workdir", copy_of, "--mode", mode]
    code, line = run_cli(capsys, argv + (["--config.train.num_steps=6"] if mode == "train" else []))
    assert code == 2, line
    assert f"checkpoint {copy_of}/checkpoints/4 is unreadable (truncated or corrupt): " in line
    assert (("is not valid for value of size" in line) if damage == "truncated"
            else "JSONDecodeError" in line), line
    assert f"delete {copy_of}/checkpoints/4 to use step 2 instead" in line
    assert digest(copy_of) == before


def _cifar_npz(path, n=6, labels=None, bad_jpeg=None, decoded=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n if labels is None else labels) % 10
    if decoded:
        np.savez(path, train_images=images, train_labels=labels)
        return
    blobs = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG")
        blobs.append(b"not a jpeg at all" if i == bad_jpeg else buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(path, train_jpeg=np.frombuffer(b"".join(blobs), np.uint8),
             train_offsets=offsets, train_labels=labels)


@pytest.mark.parametrize("case", ["truncated_npz", "bad_jpeg", "short_labels"])
def test_corrupt_data(tmp_path, capsys, case):
    """A truncated npz, an image that is not a JPEG, fewer labels than images: exit code 2,
    one line naming the file (and the image index); nothing written to the workdir."""
    path = str(tmp_path / "data.npz")
    mode = "train"
    if case == "truncated_npz":
        _cifar_npz(path, decoded=True)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        message = f"{path} is not a readable npz (truncated or corrupt): BadZipFile"
    elif case == "bad_jpeg":
        _cifar_npz(path, bad_jpeg=3)
        message = f"{path}: image 3 of train_jpeg (bytes "
    else:
        _cifar_npz(path, labels=5, decoded=True)
        mode = "train_proxy"  # the labels are what the proxy network learns
        message = f"{path} (train) holds 6 images but 5 labels"
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("kept")
    before = digest(work)
    code, line = run_cli(capsys, [
        "bidm_jax", "--config", CONFIG, "--workdir", str(work), "--mode", mode,
        "--config.data.dataset=cifar10", "--config.data.source=npz", f"--config.data.path={path}",
        "--config.data.image_size=32", "--config.model.resolution=32"])
    assert code == 2 and message in line, line
    assert digest(work) == before


def test_workdir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, line = run_cli(capsys, train_args(f, 4))
    assert code == 2 and f"--workdir '{f}' is a file, not a directory" in line
    assert f.read_text() == "x"


def test_later_modes_use_the_saved_config(trained, capsys):
    """Without --config, sampling rebuilds the trained model from the saved config (the
    training's own final samples come back) and overrides apply on top of it."""
    final = np.load(os.path.join(trained, "samples", "samples_train.npz"))["arr_0"]
    assert run_cli(capsys, ["bidm_jax", "--workdir", trained, "--mode", "sample"]) == (0, None)
    again = np.load(os.path.join(trained, "samples", "samples.npz"))["arr_0"]
    np.testing.assert_array_equal(again, final)
    assert run_cli(capsys, ["bidm_jax", "--workdir", trained, "--mode", "sample",
                            "--config.sample.seed=7"]) == (0, None)
    assert not np.array_equal(np.load(os.path.join(trained, "samples", "samples.npz"))["arr_0"],
                              final)


def test_architecture_conflicts_name_the_field(trained, tmp_path, capsys):
    """An override or a config file whose model differs from the saved one, a teacher of
    another architecture: exit code 2, one line with the field and both values."""
    before = digest(trained)
    saved = saved_config.path(trained)
    code, line = run_cli(capsys, ["bidm_jax", "--workdir", trained, "--mode", "sample",
                                  "--config.model.num_res_blocks=2"])
    assert code == 2 and (f"model.num_res_blocks=2 differs from the model --workdir {trained} "
                          f"holds (model.num_res_blocks=1 in {saved}, written by --mode "
                          "train)") in line, line
    assert "pass --config.model.num_res_blocks=1" in line
    quickstart = os.path.join(ROOT, "configs", "quickstart.py")
    code, line = run_cli(capsys, ["bidm_jax", "--config", quickstart, "--workdir", trained,
                                  "--mode", "export"])
    assert code == 2 and "model.attn_resolutions=(4,) differs" in line and "(also " in line
    code, line = run_cli(capsys, [
        "bidm_jax", "--config", CONFIG, "--workdir", str(tmp_path / "student"), "--mode",
        "distill", "--config.quant.method=xnor", "--config.model.ch=64",
        f"--config.distill.teacher={trained}/checkpoints"])
    assert code == 2 and (f"distill.teacher={trained}/checkpoints was trained with "
                          "model.ch=32") in line and "this config has model.ch=64" in line
    assert digest(trained) == before and not (tmp_path / "student").exists()


def test_saved_config_keeps_types_and_gains_new_fields(trained, tmp_path):
    """Tuples and typed placeholders survive the JSON; a field the code added after the run
    comes back with its default; a file that does not parse is a clear error."""
    work = str(tmp_path)
    with open(saved_config.path(trained)) as f:
        doc = json.load(f)
    del doc["config"]["train"]["grad_clip"]
    with open(saved_config.path(work), "w") as f:
        json.dump(doc, f)
    config, written_by = saved_config.load(work)
    assert written_by == "train" and config.model.ch_mult == (1,)
    assert config.train.grad_clip == 1.0 and config.distill.num_steps is None
    config.distill.num_steps = 3  # a typed placeholder still accepts its type
    with open(saved_config.path(work), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="the workdir's saved config\\) is unreadable"):
        saved_config.load(work)


def test_every_shipped_config_resolves_one_architecture_in_every_mode():
    """The workdir check must not fire on a config against itself: the architecture fields
    of each shipped config resolve the same in every mode that builds the model."""
    configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                     if f.endswith(".py") and f != "__init__.py")
    checked = 0
    for name in configs:
        module = sibling(os.path.join(ROOT, "configs", name), name[:-3])
        if not hasattr(module, "get_config"):
            continue
        try:
            base = module.get_config()
        except TypeError:  # a config that takes an argument (the reproduction driver's)
            continue
        arch = {mode: saved_config.architecture(resolve_config(base, mode))
                for mode in ("train", "distill", "sample", "export", "summary")}
        for mode, fields in arch.items():
            assert fields == arch["distill"], (name, mode)
        checked += 1
    assert checked >= 10


def test_diverging_run_through_the_command_line(tmp_path, capsys):
    """A NaN-producing learning rate: the run stops after train.max_nonfinite_streak
    non-finite updates in a row, within a few dozen steps, with exit code 3 and one line
    that says why; it keeps no checkpoint of a broken model and writes no samples."""
    work = tmp_path / "run"
    code, line = run_cli(capsys, train_args(work, 60, "--config.train.lr=1e6",
                                            "--config.train.warmup_steps=0",
                                            "--config.train.max_nonfinite_streak=5",
                                            "--config.ckpt.save_every=100"))
    assert code == 3, line
    assert "training diverged: the last" in line and "were non-finite" in line
    assert "train.lr (now 1e+06)" in line and "no checkpoint was written" in line
    assert int(line.split("(to step ")[1].split(")")[0]) <= 20
    assert not (work / "samples").exists() and not (work / "final.json").exists()
    assert finished_steps(work) == []


@pytest.mark.parametrize("reader", ["packed", "reference", "proxy", "samples"])
def test_truncated_project_npz_files_name_the_file(tmp_path, reader):
    """Every npz the project reads back (packed export, reference statistics, proxy feature
    network, samples) turns a truncated file into one CorruptFile naming it."""
    from bidm_jax import export
    from bidm_jax.errors import CorruptFile
    from bidm_jax.metrics import evaluate, proxy, reference

    path = str(tmp_path / f"{reader}.npz")
    np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.ones(64))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    read = {"packed": export.read_packed,
            "reference": lambda p: reference.load_reference(p, None),
            "proxy": proxy.load_proxy, "samples": evaluate.load_samples}[reader]
    with pytest.raises(CorruptFile, match=f"{path} is not a readable .* npz "
                                          r"\(truncated or corrupt\): BadZipFile"):
        read(path)
