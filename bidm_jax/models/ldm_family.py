"""The ``ldm_unet`` family: the CompVis latent-diffusion UNet (methods.md §1.2) with the
layer policy, feature taps and TBS wiring of BiDM's and BinaryDM's LDM code (§2.1, §2.5,
§2.6, §3.1, §3.2).

Model fields it reads (configs/default.py ``model`` section): ``ch``, ``ch_mult``,
``num_res_blocks``, ``attn_resolutions`` (feature resolutions, not CompVis's downsample
factors), ``dropout``, ``in_channels``, ``out_ch``, ``resolution`` (the latent size),
``resamp_with_conv``, ``num_heads``, ``num_head_channels`` (> 0 wins over num_heads),
``use_scale_shift_norm``, ``resblock_updown``, ``dtype``. :func:`ldm4_model_config` and
:func:`ldm8_model_config` are the paper models.
"""
from __future__ import annotations

from bidm_jax.models.ddim_family import validate_unet_fields
from bidm_jax.models.ldm_unet import LDMUNet, num_heads_for
from bidm_jax.models.registry import Family, register_family

# Kept full precision (BiDM/BinaryDM code: bnn_modules [0], [1], [2] and [-1], methods.md
# §2.1): the time MLP, the first and the last conv; and BiDM's plain-Conv2d ResBlock skips
# (BinaryDM binarizes those: methods/lowbit.py moves ``skip_patterns`` to the binary side).
FP_LAYERS = ("time_embed.0", "time_embed.2", "input_blocks.0.0", "out.2", "*.skip_connection")
# Binarized: the ResBlock convs and embedding projection, the resampler convs, attention
# qkv/proj_out (Conv1d in the official code: no XNOR input scale, no per-conv shortcut).
BINARY_LAYERS = ("*.in_layers.2", "*.out_layers.3", "*.emb_layers.1", "*.op", "*.conv",
                 "*.qkv", "*.proj_out")
SKIP_PATTERNS = ("*.skip_connection",)
EDGE_LAYERS = ("input_blocks.0.0", "out.2")
# Conv1d in the official code (1x1 convs here): BiDM's BNNConv1d is the shifted sign and the
# per-channel weight scale only, without BNNConv2d's k-conv scale map and shortcut (§2.3).
CONV1D_LAYERS = ("*.qkv", "*.proj_out")
# BiDM's LDM code: a (100, 31) coefficient table whose column is the global block counter
# (input blocks, middle, output blocks; 31 = LDM-8's 15 + 1 + 15), and mixing on the output
# blocks while at most 8 cached entries remain, i.e. the last 8 (methods.md §2.5).
CODE_TBS_COLUMNS = 31
CODE_TBS_LAST = 8


def _config(**fields):
    import ml_collections

    base = dict(name="ldm_unet", dropout=0.0, num_res_blocks=2, resamp_with_conv=True,
                dtype="float32", num_heads=-1, num_head_channels=-1,
                use_scale_shift_norm=False, resblock_updown=False)
    return ml_collections.ConfigDict({**base, **fields})


def ldm4_model_config():
    """LDM-4 (LSUN-Bedrooms, FFHQ; CompVis models/ldm/lsun_beds256/config.yaml): VQ-f4
    latents 64x64x3, attention_resolutions [8, 4, 2] (ds) = 8, 16, 32 px."""
    return _config(ch=224, ch_mult=(1, 2, 3, 4), attn_resolutions=(32, 16, 8), in_channels=3,
                   out_ch=3, resolution=64, num_head_channels=32)


def ldm8_model_config():
    """LDM-8 (LSUN-Churches; models/ldm/lsun_churches256/config.yaml): KL-f8 latents
    32x32x4, attention_resolutions [1, 2, 4, 8] (ds) = 32 ... 4 px, 8 heads, scale-shift
    norm, ResBlock up/down."""
    return _config(ch=192, ch_mult=(1, 2, 2, 4, 4), attn_resolutions=(32, 16, 8, 4),
                   in_channels=4, out_ch=4, resolution=32, num_heads=8,
                   use_scale_shift_norm=True, resblock_updown=True)


PRESETS = {"ldm4": ldm4_model_config, "ldm8": ldm8_model_config}
_ARCH_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch",
                "resolution", "num_heads", "num_head_channels", "use_scale_shift_norm",
                "resblock_updown")


def preset(model_config) -> str | None:
    """'ldm4' / 'ldm8' when ``model_config`` builds that paper model (its architecture
    fields; dropout and dtype aside), else None."""
    def arch(m):
        # num_heads is unused when num_head_channels > 0 (LDM-4)
        return {f: tuple(v) if isinstance(v, (list, tuple)) else v
                for f in _ARCH_FIELDS for v in (m.get(f),)
                if not (f == "num_heads" and (m.get("num_head_channels") or -1) > 0)}
    return next((name for name, make in PRESETS.items() if arch(model_config) == arch(make())),
                None)


def build(model_config, *, rngs, factory, dtype):
    m = model_config
    return LDMUNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                   attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                   in_channels=m.in_channels, out_ch=m.out_ch, resolution=m.resolution,
                   num_heads=m.num_heads, num_head_channels=m.num_head_channels,
                   use_scale_shift_norm=m.use_scale_shift_norm,
                   resblock_updown=m.resblock_updown, resamp_with_conv=m.resamp_with_conv,
                   factory=factory, dtype=dtype, rngs=rngs)


def input_shape(config) -> tuple[int, int, int]:
    """Latent space: (resolution, resolution, in_channels), e.g. (64, 64, 3) for LDM-4."""
    m = config.model
    return (m.resolution, m.resolution, m.in_channels)


def validate(config) -> None:
    m = config.model
    validate_unet_fields(m)
    levels = len(m.ch_mult)
    reachable = {m.resolution // 2 ** i for i in range(levels)}
    for r in m.attn_resolutions:
        if r not in reachable:
            raise ValueError(f"model.attn_resolutions has {r}, not a feature resolution of "
                             f"this UNet ({sorted(reachable, reverse=True)}); they are pixel "
                             "sizes of the latent features, not CompVis's downsample factors")
    for i, mult in enumerate(m.ch_mult):
        if m.resolution // 2 ** i in m.attn_resolutions or i == levels - 1:
            num_heads_for(m.ch * mult, m.num_heads, m.num_head_channels)  # raises if invalid


def timestep_outputs(model) -> list[str]:
    """The TimestepEmbedSequential outputs in execution order: ``input_blocks.{i}``,
    ``middle_block``, ``output_blocks.{i}`` (LDM-4: 12 + 1 + 12 = 25; LDM-8: 31)."""
    return ([f"input_blocks.{i}" for i in range(model.num_input_blocks)] + ["middle_block"]
            + [f"output_blocks.{i}" for i in range(model.num_output_blocks)])


def spd_features(model) -> list[str]:
    """BiDM's LDM code distils every TimestepEmbedSequential output (methods.md §2.6)."""
    return timestep_outputs(model)


def tbs_mix(model, kind: str, last_n: int = CODE_TBS_LAST) -> tuple[tuple, int]:
    """TBS mixing points ((point, source, column), ...) and the coefficient column count.

    Each mixed output block blends with its own previous output. ``code`` (BiDM's LDM code,
    methods.md §2.5): the last 8 output blocks, column = the global block counter
    (n_in + 1 + j) of a 31-column table: LDM-4 output_blocks 4-11 -> columns 17-24, LDM-8
    output_blocks 7-14 -> columns 23-30. ``paper``: the last ``last_n`` output blocks, one
    column each (0 ... last_n - 1)."""
    n_in, n_out = model.num_input_blocks, model.num_output_blocks
    if kind == "code":
        first = max(n_out - CODE_TBS_LAST, 0)
        mix = tuple((f"output_blocks.{j}", f"output_blocks.{j}", n_in + 1 + j)
                    for j in range(first, n_out))
        return mix, max(CODE_TBS_COLUMNS, n_in + 1 + n_out)
    if kind == "paper":
        if not 1 <= last_n <= n_out:
            raise ValueError(f"distill.tbs_last_n={last_n} must be in [1, {n_out}] for this "
                             "UNet")
        names = [f"output_blocks.{j}" for j in range(n_out - last_n, n_out)]
        return tuple((p, p, k) for k, p in enumerate(names)), last_n
    raise ValueError(f"distill.tbs_topology={kind!r} is invalid; valid choices: code, paper")


def block_group(path: str, model_config) -> int | None:
    """BinaryDM's block group of ``path`` (methods.md §3.2), R = num_res_blocks, L levels.

    The released code (4 levels, R = 2) takes g = idx // 3 for ``input_blocks.idx``,
    g = 3 - idx // 3 for ``output_blocks.idx`` and 4 for the middle block; with 5 levels
    (LDM-8) 3 - idx // 3 reaches -1. The rule used here is the resolution level of the
    block: g = idx // (R + 1) for input blocks (a downsample block belongs to the level it
    outputs), g = (L - 1) - idx // (R + 1) for output blocks (an upsample belongs to the
    level it reads), L for the middle block. It equals the code's formula at L = 4 and keeps
    "group g holds features at 2^-g of the input size" for any L, so groups 0 and 1 stay
    the feature-scale >= 1/2 head/tail blocks (LDM-8: its 32x32 and 16x16 blocks). The time
    MLP and ``out.2`` are outside the blocks (None)."""
    r1, levels = model_config.num_res_blocks + 1, len(model_config.ch_mult)
    parts = path.split(".")
    if parts[0] == "middle_block":
        return levels
    if parts[0] in ("input_blocks", "output_blocks") and len(parts) > 1 and parts[1].isdigit():
        idx = int(parts[1])
        return idx // r1 if parts[0] == "input_blocks" else levels - 1 - idx // r1
    return None


def num_groups(model_config) -> int:
    """L + 1 block groups: levels 0 ... L-1 and the middle block (LDM-4: 5; LDM-8: 6)."""
    return len(model_config.ch_mult) + 1


LDM_UNET = register_family(Family(
    name="ldm_unet", build=build, fp_layers=FP_LAYERS, binary_layers=BINARY_LAYERS,
    input_shape=input_shape, validate=validate, spd_features=spd_features, tbs_mix=tbs_mix,
    skip_patterns=SKIP_PATTERNS, edge_layers=EDGE_LAYERS, conv1d_layers=CONV1D_LAYERS,
    block_group=block_group,
    num_groups=num_groups, timestep_outputs=timestep_outputs, preset=preset))
