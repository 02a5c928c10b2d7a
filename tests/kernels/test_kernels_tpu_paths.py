"""TPU paths of the packed matmul/conv (docs/kernels.md, "TPU paths"): int4, int8, fp8 and bf16
MXU operands and the XNOR-popcount kernel.

Each path is exported for platform "tpu" (the operand dtype of the Mosaic ``tpu.matmul`` is
read back from the serialized kernel) and run in Pallas' TPU interpret mode
(``pltpu.InterpretParams``) against the jnp reference on fresh random inputs; sums are
integers, so equality is exact. The ``auto`` choice is tested with fake device kinds.
"""

import base64
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from bidm_jax.kernels import reference as ref
from bidm_jax.kernels import tpu_matmul as T
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import pack_signs
from bidm_jax.kernels.xnor import xnor_popcount_matmul
from bidm_jax.quant.packed import PackedOptions, conv_plane

S = jax.ShapeDtypeStruct
TPU_INTERPRET = getattr(pltpu, "InterpretParams", None)
needs_tpu_interpret = pytest.mark.skipif(TPU_INTERPRET is None,
                                         reason="this jax has no pltpu.InterpretParams")
# MLIR element types of the MXU operands and accumulator in the Mosaic module.
MXU_TYPES = {"int4": ("i4", "i32"), "int8": ("i8", "i32"), "fp8": ("f8E4M3FN", "f32"),
             "bf16": ("bf16", "f32")}


def _levels(key, shape, bits):
    """Signed b-bit integer levels as int8, the extremes included ({-1, 0, 1} for b = 1)."""
    lo, hi = (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    x = jax.random.randint(key, shape, lo, hi + 1)
    return x.at[0, :2].set(jnp.array([lo, hi])).astype(jnp.int8)


# --- auto selection and validation ---------------------------------------------------------

@pytest.mark.parametrize("kind,path", [
    ("TPU v2", "bf16"), ("TPU v3", "bf16"), ("TPU v4", "bf16"), ("TPU v4 lite", "bf16"),
    ("TPU v5 lite", "int4"), ("TPU v5e", "int4"), ("TPU v5", "int4"), ("TPU v5p", "int4"),
    ("TPU v6 lite", "int4"), ("TPU v6e", "int4"), ("TPU7x", "fp8"), ("TPU7", "fp8"),
    ("TPU8i", "fp8"), ("cpu", "int8"), ("NVIDIA H200", "int8"), ("", "int8")])
def test_auto_operand_by_device_kind(kind, path, monkeypatch):
    assert T.operand_for_device_kind(kind) == path
    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(device_kind=kind)])
    assert T.resolve_tpu_operand("auto") == path
    assert T.resolve_tpu_operand("popcount") == "popcount"  # explicit choices pass through


def test_tpu_operand_flag_validation(monkeypatch):
    from bidm_jax.export import check_tpu_path, packed_options

    cfg = types.SimpleNamespace(export=types.SimpleNamespace(
        kernel="pallas", pallas_backend="tpu", tpu_operand="int2"))
    with pytest.raises(ValueError, match="export.tpu_operand='int2'.*auto, int4, int8, fp8, bf16, popcount"):
        packed_options(cfg)
    with pytest.raises(ValueError, match="tpu_operand='x'.*valid choices"):
        T.resolve_tpu_operand("x")
    cfg.export.tpu_operand = "auto"
    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(device_kind="TPU v6 lite")])
    assert packed_options(cfg).tpu_path == "int4"
    assert PackedOptions(kernel="xla", tpu_operand="int4").tpu_path is None    # no TPU kernel
    assert PackedOptions(kernel="pallas", backend="gpu").tpu_path is None
    layers = {"a": {"bits_w": 1, "planes": 1, "bits_a": 4},
              "b": {"bits_w": 1, "planes": 1, "bits_a": 32},    # FP activations: no int core
              "c": {"bits_w": 8, "planes": 0, "bits_a": 8}}     # multi-bit weights: XLA core
    check_tpu_path(packed_options(cfg), layers, "f.npz")
    for op in ("popcount", "int4", "fp8"):
        layers["a"]["bits_a"] = 1 if op == "int4" else 8
        layers["d"] = {"bits_w": 1, "planes": 1, "bits_a": 8}
        with pytest.raises(ValueError, match=rf"'{op}' path.*\[8\]-bit.*: int8, bf16"):
            check_tpu_path(PackedOptions(kernel="pallas", backend="tpu", tpu_operand=op),
                           layers, "f.npz")
    check_tpu_path(PackedOptions(kernel="pallas", backend="tpu", tpu_operand="int8"), layers, "f")


def test_act_bits_refused_above_each_path():
    for path, limit in T.MAX_ACT_BITS.items():
        T.check_act_bits(path, limit)
        with pytest.raises(ValueError, match=f"at most {limit} bit"):
            T.check_act_bits(path, limit + 1)
    w = pack_signs(jnp.ones((64, 8)), 0, group_words=2)
    with pytest.raises(ValueError, match="'int4' path.*at most 4.*got 5"):
        packed_matmul(jnp.ones((4, 64), jnp.int8), w, 64, 2, backend="tpu", operand="int4", act_bits=5)
    with pytest.raises(ValueError, match="integer activation levels"):
        packed_matmul(jnp.ones((4, 64)), w, 64, 2, backend="tpu", operand="fp8")
    with pytest.raises(ValueError, match="TPU path"):
        packed_matmul(jnp.ones((4, 64), jnp.int8), w, 64, 2, backend="gpu", operand="int4")


# --- lowering for platform "tpu" -----------------------------------------------------------

def _mosaic_modules(text: str) -> list[str]:
    """The Mosaic kernels of an exported module as MLIR text (decoded from the custom calls'
    serialized bodies with jax's private Mosaic bindings; skips where they are missing)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.lib import tpu
        from jaxlib.mlir import ir
        from jaxlib.mlir.passmanager import PassManager
    except ImportError as e:  # pragma: no cover - depends on the jaxlib build
        pytest.skip(f"cannot decode Mosaic kernels with this jaxlib: {e}")
    out = []
    for body in re.findall(r'custom_call_config\\22: \{\\22body\\22: \\22([A-Za-z0-9+/=]+)', text):
        ctx = mlir.make_ir_context()
        tpu.register_dialect(ctx)
        with ctx, ir.Location.unknown():
            ctx.allow_unregistered_dialects = True
            module = ir.Module.parse(base64.b64decode(body))
            PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)
            out.append(str(module))
    return out


@pytest.mark.parametrize("operand", T.OPERANDS)
def test_mxu_paths_lower_for_tpu(operand):
    k, g = 2048, 32  # two groups of 32 words
    fn = lambda x, w: packed_matmul(x, w, k, g, backend="tpu", operand=operand)
    text = jax.export.export(jax.jit(fn), platforms=["tpu"])(
        S((64, k), jnp.int8), S((k // 32, 128), jnp.int32)).mlir_module()
    assert "tpu_custom_call" in text
    (kernel,) = _mosaic_modules(text)
    a, acc = MXU_TYPES[operand]
    dots = re.findall(r"tpu\.matmul .*: (vector<[^>]*>), (vector<[^>]*>), (vector<[^>]*>)", kernel)
    assert len(dots) == 32  # one dot per bit plane
    assert all(lhs.endswith(f"x{a}>") and rhs.endswith(f"x{a}>") and o.endswith(f"x{acc}>")
               for lhs, rhs, o in dots), dots[0]


def test_packed_conv_paths_lower_for_tpu():
    # The model-level conv (quant/packed.py) through the MXU int4 path and the popcount path.
    k = 9 * 64
    words, scale = jnp.zeros((k // 32, 64), jnp.int32), jnp.ones((64,))
    for path, marker in (("int4", "xi4>"), ("popcount", "tpu_custom_call")):
        opts = PackedOptions(kernel="pallas", backend="tpu", interpret=False, tpu_operand=path)
        fn = lambda x: conv_plane(x, words, scale, kernel_size=3, in_features=64, stride=1,
                                  padding=1, group_words=k // 32, opts=opts)
        text = jax.export.export(jax.jit(fn), platforms=["tpu"])(S((2, 8, 8, 64), jnp.float32)).mlir_module()
        assert "tpu_custom_call" in text
        assert marker in (text if path == "popcount" else "".join(_mosaic_modules(text)))


# --- TPU interpret mode against the references ---------------------------------------------

@needs_tpu_interpret
@pytest.mark.parametrize("operand", T.OPERANDS)
def test_mxu_paths_in_tpu_interpret_mode(operand):
    m, k, n, g = 12, 300, 40, 8  # two groups (the second padded), M and N off the tiles
    bits = T.MAX_ACT_BITS[operand]
    kx, kw, kr, kc = jax.random.split(jax.random.key(hash(operand) % 2**31), 4)
    x = _levels(kx, (m, k), bits)
    ww = pack_signs(jax.random.normal(kw, (k, n)), 0, group_words=g)
    rs = jax.random.randint(kr, (m,), 1, 4).astype(jnp.float32)  # integer scales: exact
    cs = jax.random.randint(kc, (n,), 1, 4).astype(jnp.float32)
    got = jax.jit(lambda x_, w_: packed_matmul(
        x_, w_, k, g, rs, cs, backend="tpu", operand=operand, act_bits=bits,
        interpret=TPU_INTERPRET()))(x, ww)
    np.testing.assert_array_equal(got, ref.packed_matmul_ref(x, ww, k, g, rs, cs))


@needs_tpu_interpret
def test_popcount_path_in_tpu_interpret_mode():
    m, k, n = 12, 300, 40
    ka, kb, km = jax.random.split(jax.random.key(11), 3)
    aw, bw = pack_signs(jax.random.normal(ka, (m, k)), 1), pack_signs(jax.random.normal(kb, (k, n)), 0)
    mask = pack_signs(jnp.where(jax.random.bernoulli(km, 0.7, (m, k)), -1.0, 1.0), 1)
    got = jax.jit(lambda a_, b_, m_: xnor_popcount_matmul(
        a_, b_, k, a_mask=m_, backend="tpu", interpret=TPU_INTERPRET()))(aw, bw, mask)
    np.testing.assert_array_equal(got, ref.xnor_popcount_matmul_ref(aw, bw, k, a_mask=mask))


@needs_tpu_interpret
@pytest.mark.parametrize("path,bits", [("int4", 4), ("popcount", 1)])
def test_packed_conv_paths_match_xla(path, bits):
    """quant/packed.py's conv core on the TPU path equals the XLA int8 conv bit for bit:
    4-bit levels on int4 (W1A4), ternary values with zero padding on popcount (W1A1)."""
    cin, cout, k = 8, 16, 72
    kx, kw = jax.random.split(jax.random.key(bits))
    x = _levels(kx, (2 * 5 * 5, cin), bits).reshape(2, 5, 5, cin)
    w = jax.random.normal(kw, (k, cout))
    scale = jnp.arange(1.0, cout + 1)
    kwargs = dict(kernel_size=3, in_features=cin, stride=1, padding=1, act_bits=bits)
    want = conv_plane(x, pack_signs(w, 0), scale, group_words=1,
                      opts=PackedOptions(kernel="xla"), **kwargs)
    opts = PackedOptions(kernel="pallas", backend="tpu", interpret=TPU_INTERPRET(), tpu_operand=path)
    g = opts.group_words(k)
    got = jax.jit(lambda x_, w_: conv_plane(x_, w_, scale, group_words=g, opts=opts, **kwargs))(
        x, pack_signs(w, 0, group_words=g))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="at most"):
        conv_plane(x, pack_signs(w, 0, group_words=g), scale, group_words=g, opts=opts,
                   **{**kwargs, "act_bits": 8})
