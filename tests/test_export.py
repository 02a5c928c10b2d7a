"""Packed inference (``--mode export`` and ``sample.packed``): packed layers equal the
fake-quant layers for every method and both executions (xla, Pallas in interpret mode),
export writes 1-bit words and real byte counts, packed sampling gives the fake-quant
student's images, and bad input is a clear error."""
import copy
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax import build, export, parallel
from bidm_jax.diffusion.sampling import generate, make_sampler
from bidm_jax.kernels.packing import (pack_signs, pack_signs_host, regroup_words_host,
                                      unpack_signs_host)
from bidm_jax.main import run
from bidm_jax.models.functional import Functional, check_shapes
from bidm_jax.quant import QuantFactory
from bidm_jax.quant.packed import PackedOptions, scale_of
from bidm_jax.training import checkpoint
from tests.conftest import ROOT, quant_config, resolved, tiny_config


class Layers(nnx.Module):
    """One of each binary layer shape the UNet has: 3x3 conv with a channel change (FP 1x1
    shortcut), 3x3 conv (identity shortcut), strided VALID downsample, 1x1 attention conv,
    dense temb_proj."""

    def __init__(self, factory, rngs):
        self.conv1 = factory.conv("down.0.block.0.conv1", 8, 16, 3, padding=1, rngs=rngs)
        self.conv2 = factory.conv("down.0.block.0.conv2", 16, 16, 3, padding=1, rngs=rngs)
        self.down = factory.conv("down.0.downsample.conv", 16, 16, 3, stride=2, rngs=rngs)
        self.q = factory.conv("mid.attn_1.q", 16, 16, 1, rngs=rngs)
        self.temb_proj = factory.dense("down.0.block.0.temb_proj", 12, 16, rngs=rngs)

    def __call__(self, x8, x16, e):
        return {"conv1": self.conv1(x8), "conv2": self.conv2(x16),
                "down": self.down(jnp.pad(x16, ((0, 0), (0, 1), (0, 1), (0, 0)))),
                "q": self.q(x16), "temb_proj": self.temb_proj(e)}


SIZES = {"down.0.block.0.conv1": (6, 6), "down.0.block.0.conv2": (6, 6),
         "down.0.downsample.conv": (3, 3), "mid.attn_1.q": (6, 6)}
# Every weight scale (per channel detached / learnable sigma, per layer, none) and activation
# set ({-1,0,1} with and without tau, {0,1}) and every epilogue (K map, box, Gamma, RPReLU
# pre/post residual, shortcuts, kept bias).
CASES = {"bidm": {}, "bidm_sigma": {"weight_scale": "learnable"}, "xnor": {},
         "xnor++": {}, "dorefa": {}, "reactnet": {}, "reste": {}, "bbcu": {},
         "bidm_bias": {"binary_bias": "keep"}}
# The Pallas core differs between methods only in activation values and scales; interpret
# mode compiles slowly on CPU, so it runs the cases that span those.
PALLAS_CASES = ("bidm", "dorefa", "xnor++", "reactnet")


def _qcfg(case):
    return quant_config(case.split("_")[0], **CASES[case])


def _perturbed(params, seed):
    """Non-trivial values for everything (tau, shortcut scale, RPReLU, Gamma and biases start
    at 0/1); weight scales stay positive except one negative sigma per layer."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, v in params.items():
        v = np.asarray(v)
        if n.endswith(("weight_scale", "xnorpp.alpha")):
            v = v * rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
            v[..., 0] = -v[..., 0]
        elif n.endswith("kernel"):  # a student built without a teacher has zero kernels
            v = v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
        else:
            v = v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
        out[n] = v
    return out


@pytest.fixture(scope="module")
def layer_results():
    """Fake-quant and packed (xla, pallas) outputs of every case, each execution compiled as
    one program over all cases (CPU compile time dominates)."""
    fake, packed = {}, {"xla": {}, "pallas": {}}
    for case in CASES:
        q = _qcfg(case)
        fm = Functional(Layers(QuantFactory(q, layer_sizes=SIZES), nnx.Rngs(0)))
        params = _perturbed(fm.params, 1)
        fake[case] = (fm, params)
        disk, layers = export.pack_params(fm, params)
        for kernel in packed:
            if kernel == "pallas" and case not in PALLAS_CASES:
                continue
            opts = PackedOptions(kernel=kernel)
            pfm = Functional(Layers(QuantFactory(q, layer_sizes=SIZES, packed=opts),
                                    nnx.Rngs(0)))
            p = dict(disk)
            for base, info in layers.items():
                p[f"{base}.kernel_bits"] = np.stack([regroup_words_host(
                    w, info["k"], 1, opts.group_words(info["k"]))
                    for w in p[f"{base}.kernel_bits"]])
            check_shapes(pfm.shapes(), p, case)
            packed[kernel][case] = (pfm, p)
    k = jax.random.split(jax.random.key(3), 3)
    x8 = jax.random.normal(k[0], (2, 6, 6, 8))
    x16 = jax.random.normal(k[1], (2, 6, 6, 16)).at[0, 0, 0, 0].set(0.0)  # an exact zero
    e = jax.random.normal(k[2], (2, 12))

    def apply(models):
        # Full fp32 (no TF32 on GPUs) so the fake-quant float conv is comparable.
        with jax.default_matmul_precision("highest"):
            return jax.jit(lambda ps: {c: models[c][0](ps[c], x8, x16, e) for c in models})(
                {c: models[c][1] for c in models})

    return fake, packed, apply(fake), {kernel: apply(m) for kernel, m in packed.items()}


@pytest.mark.parametrize("case,kernel", [(c, "xla") for c in sorted(CASES)] +
                         [(c, "pallas") for c in PALLAS_CASES])
def test_packed_layer_equals_fake_quant(layer_results, case, kernel):
    _, packed, ref, out = layer_results
    for name in ref[case]:
        a, b = np.asarray(ref[case][name]), np.asarray(out[kernel][case][name])
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=f"{case} {name}")
        if case == "xnor++":
            # Unscaled ±1 weights: the float conv of ±1/0 values is exact, so the integer
            # core gives bit-identical outputs.
            np.testing.assert_array_equal(b, a, err_msg=name)
    # The packed model holds words and scales instead of FP kernels (and no dead bias).
    names = set(packed[kernel][case][0].names)
    assert "conv1.kernel_bits" in names and "conv1.kernel" not in names
    assert ("conv1.bias" in names) == case.endswith("_bias")
    assert not any(n.endswith("weight_scale") for n in names)


def test_scale_and_packing_facts():
    """scale_of recovers each quantizer's scale (per channel, per layer, negative sigma),
    counts exact zeros and rejects non-binary weights; the host packer equals pack_signs in
    the plain and grouped layouts."""
    w = np.array([[0.5, -0.2], [-0.1, 0.0], [0.4, 0.3]], np.float32)
    alpha = np.abs(w).mean(0)
    s, zeros = scale_of(w, alpha * np.sign(w))
    np.testing.assert_array_equal(s, alpha)
    assert zeros == 1
    sigma = np.float32(-0.7)
    s, _ = scale_of(w, sigma * np.sign(w))
    np.testing.assert_array_equal(s, [sigma, sigma])
    with pytest.raises(ValueError, match="not scale"):
        scale_of(w, np.round(w * 4) / 4)
    for k, g in ((1, 1), (33, 1), (288, 1), (100, 32), (1152, 32), (600, 8)):
        v = np.random.default_rng(k).standard_normal((k, 5)).astype(np.float32)
        words = pack_signs_host(v, g)
        np.testing.assert_array_equal(words, np.asarray(pack_signs(v, 0, group_words=g)))
        np.testing.assert_array_equal(unpack_signs_host(words, k, g), np.sign(v))
        np.testing.assert_array_equal(regroup_words_host(pack_signs_host(v), k, 1, g), words)
    with pytest.raises(ValueError, match="export.kernel"):
        PackedOptions(kernel="cuda")


# --- end to end: checkpoint -> --mode export -> packed sampling -----------------------------

def _config(**over):
    """The tiny config (code TBS topology) without attention: its 1x1 convs are covered
    above, and each packed layer costs compile time in interpret mode."""
    c = tiny_config(**{"mesh.data": 1, "model.attn_resolutions": (), "sample.num_samples": 4,
                       "sample.batch_size": 4, "sample.grid_size": 4, **over})
    c.quant.method = "bidm"
    return c


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny BiDM student (TBS code topology) checkpoint with non-trivial values,
    exported through ``main.run(..., 'export')``; its fake-quant samples. Ancestral sampling
    with x̂0 clipping: a random student's DDIM images are ~96 % saturated pixels, its DDPM
    images ~20 %, so the image comparison sees the model."""
    work = str(tmp_path_factory.mktemp("bidm"))
    c = resolved(_config(**{"diffusion.sampler": "ddpm"}), "sample")
    fm, model_fn, carry_init = build.sampling_model(c)
    params = _perturbed(fm.params, 2)
    params = {n: (np.abs(v) * 0.1 if n == "tbs.coefficients" else v) for n, v in params.items()}
    checkpoint.write_params(os.path.join(work, "checkpoints"), params, step=7)
    report = run(c, work, "export")
    with jax.default_matmul_precision("highest"):  # no TF32 when run on a GPU
        images = generate(make_sampler(model_fn, c, carry_init), params, c,
                          parallel.make_data_mesh(1), num=4, seed=c.sample.seed,
                          shape=(8, 8, 3))
    return work, c, fm, params, report, images


def test_export_writes_bits_and_byte_counts(exported):
    work, c, fm, params, report, _ = exported
    on_disk = json.load(open(os.path.join(work, "export", "export.json")))
    assert on_disk == json.loads(json.dumps(report))
    packed, stored, meta = export.read_packed(os.path.join(work, "export", "packed.npz"))
    assert stored["quant"]["method"] == "bidm" and meta["format"] == export.FORMAT
    binary = sorted(meta["packed_layers"])
    assert len(binary) == report["packed_tensors"] > 20
    for base in binary:
        assert packed[f"{base}.kernel_bits"].dtype == np.int32
        assert f"{base}.kernel" not in packed and f"{base}.bias" not in packed
        k, o = meta["packed_layers"][base]["k"], params[f"{base}.kernel"].shape[-1]
        assert packed[f"{base}.kernel_bits"].shape == (1, -(-k // 32), o)  # one plane
        assert packed[f"{base}.kernel_scale"].shape == (1, o)
        assert meta["packed_layers"][base]["planes"] == 1
        assert meta["packed_layers"][base]["bits_a"] == 1
    for fp in ("conv_in.kernel", "conv_out.kernel", "down.0.block.0.conv1.tau",
               "down.0.block.0.conv1.kconv.kernel", "tbs.coefficients"):
        np.testing.assert_array_equal(packed[fp], params[fp])
    assert report["packed_file_bytes"] == os.path.getsize(
        os.path.join(work, "export", "packed.npz"))
    assert report["ratio_teacher_fp32_npz_over_packed"] > 1
    assert report["teacher_fp32_npz_bytes"] > report["teacher_fp32_params_bytes"]
    assert report["student_fp32_npz_bytes"] > report["packed_file_bytes"]
    assert report["packed_weights"] == 8 * report["packed_bytes"]  # every K is 32·n here
    assert report["exact_zero_weights"] == 0 and report["step"] == 7


def test_packed_first_step_matches_fake_quant(exported):
    """xla execution: ε̂ at the first DDIM step within 1e-4 of the fake-quant student's, and
    every tapped feature has the same signs (away from float noise around 0)."""
    work, c, fm, params, _, _ = exported
    c = copy.deepcopy(c)
    c.export.kernel = "xla"
    pfm, _, _, pparams = export.packed_sampling_model(
        c, os.path.join(work, "export", "packed.npz"))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.full((2,), 990)

    def forward(f, p):
        feats = {}
        eps, _ = f.module(p)(x, t, None, features=feats)
        return eps, feats

    with jax.default_matmul_precision("highest"):
        (e0, f0), (e1, f1) = jax.jit(lambda a, b: (forward(fm, a), forward(pfm, b)))(
            params, pparams)
    np.testing.assert_allclose(np.asarray(e1), np.asarray(e0), atol=1e-4, rtol=1e-4)
    for name in f0:
        a, b = np.asarray(f0[name]), np.asarray(f1[name])
        far = np.abs(a) > 1e-4
        assert np.array_equal(np.sign(a[far]), np.sign(b[far])), name


def test_packed_sampling_equals_fake_quant(exported):
    """--mode sample with sample.packed=auto and the Pallas kernel (interpret mode on CPU)
    writes the fake-quant student's images (a pixel may differ by 1 from float rounding)."""
    work, c, _, _, _, images = exported
    c = copy.deepcopy(c)
    c.sample.packed = "auto"
    c.export.kernel = "pallas"
    with jax.default_matmul_precision("highest"):
        path = run(c, work, "sample")
    got = np.load(path)["arr_0"]
    assert got.shape == images.shape == (4, 8, 8, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - images.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01


def test_bad_input_is_a_clear_error(exported, tmp_path):
    """Method 'fp', no checkpoint, an FP checkpoint, no file, a foreign npz, a config that
    differs from the file's."""
    work, c, _, _, _, _ = exported
    fp = _config()
    fp.quant.method = "fp"
    with pytest.raises(ValueError, match="no binary layers"):
        run(fp, str(tmp_path), "export")
    with pytest.raises(FileNotFoundError, match="--mode distill"):
        run(_config(), str(tmp_path), "export")
    teacher_dir = tmp_path / "teacher_run"  # an FP checkpoint where a student is expected
    shapes = build.teacher(resolved(_config())).shapes()
    checkpoint.write_params(str(teacher_dir / "checkpoints"),
                            {n: np.zeros(v.shape, v.dtype) for n, v in shapes.items()})
    with pytest.raises(ValueError, match="does not match the model"):
        run(_config(), str(teacher_dir), "export")
    missing = _config(**{"sample.packed": str(tmp_path / "none.npz")})
    with pytest.raises(FileNotFoundError, match="--mode export"):
        run(missing, str(tmp_path), "sample")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a bidm_jax packed export"):
        run(_config(**{"sample.packed": str(tmp_path / "other.npz")}), str(tmp_path), "sample")
    other = _config(**{"sample.packed": os.path.join(work, "export", "packed.npz")})
    other.quant.shortcut_abs = True  # same shapes, other forward: caught by the config check
    with pytest.raises(ValueError, match="quant.shortcut_abs"):
        run(other, str(tmp_path), "sample")
    wide = _config(**{"sample.packed": os.path.join(work, "export", "packed.npz"),
                      "model.ch": 64})
    with pytest.raises(ValueError, match="model.ch"):
        run(wide, str(tmp_path), "sample")


def test_format_1_files_still_load(exported, tmp_path):
    """A ``bidm_jax.packed/1`` file (one plane without the plane axis, no plane facts) loads
    into the same packed model values as the ``/2`` file it was made from."""
    work, c, _, _, _, _ = exported
    path = os.path.join(work, "export", "packed.npz")
    params, stored, meta = export.read_packed(path)
    old_meta = {**meta, "format": "bidm_jax.packed/1"}
    old = {}
    for n, v in params.items():
        base, leaf = n.rsplit(".", 1)
        packed_leaf = leaf in ("kernel_bits", "kernel_scale")
        old[n] = v[0] if base in meta["packed_layers"] and packed_leaf else v
    for info in old_meta["packed_layers"].values():
        info.pop("planes")
    old_path = str(tmp_path / "v1.npz")
    np.savez(old_path, **old, **{export.CONFIG_KEY: export._json_bytes(stored),
                                 export.META_KEY: export._json_bytes(old_meta)})
    c = copy.deepcopy(c)
    c.export.kernel = "xla"
    *_, new_values = export.packed_sampling_model(c, path)
    *_, old_values = export.packed_sampling_model(c, old_path)
    assert sorted(new_values) == sorted(old_values)
    for n in new_values:
        np.testing.assert_array_equal(old_values[n], new_values[n], err_msg=n)


def test_cli_export_without_checkpoint_exits_cleanly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bidm_jax.main", "--config",
         os.path.join(ROOT, "configs", "cifar10_ddim.py"), "--workdir", str(tmp_path),
         "--mode", "export"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "no student checkpoint" in proc.stderr and "Traceback" not in proc.stderr
