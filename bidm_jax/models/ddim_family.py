"""The ``ddim_unet`` family: the ermongroup DDIM pixel UNet (methods.md §1.1) with the layer
names, feature taps and TBS wiring BiDM's CIFAR code uses on it (§2.1, §2.5)."""
from __future__ import annotations

from bidm_jax.models.ddim_unet import DDIMUNet
from bidm_jax.models.registry import Family, register_family

# Kept full precision (methods.md §2.1 DDIM list): time MLP, first and last conv, the 1×1
# channel-changing skip of the ResnetBlocks. Checked before the binary patterns.
FP_LAYERS = ("temb.dense.*", "conv_in", "conv_out", "*.nin_shortcut")
# Binarized: ResnetBlock conv1/conv2/temb_proj, attention q/k/v/proj_out, resampler convs.
BINARY_LAYERS = ("*.conv1", "*.conv2", "*.temb_proj", "*.q", "*.k", "*.v", "*.proj_out",
                 "*.downsample.conv", "*.upsample.conv")


def build(model_config, *, rngs, factory, dtype):
    return DDIMUNet(ch=model_config.ch, ch_mult=tuple(model_config.ch_mult),
                    num_res_blocks=model_config.num_res_blocks,
                    attn_resolutions=tuple(model_config.attn_resolutions),
                    dropout=model_config.dropout, in_channels=model_config.in_channels,
                    out_ch=model_config.out_ch, resolution=model_config.resolution,
                    resamp_with_conv=model_config.resamp_with_conv, factory=factory,
                    dtype=dtype, rngs=rngs)


def input_shape(config) -> tuple[int, int, int]:
    """Pixel space: (resolution, resolution, in_channels)."""
    m = config.model
    return (m.resolution, m.resolution, m.in_channels)


def validate_unet_fields(m) -> None:
    """Checks the fields every UNet family shares (``m``: the ``model`` section)."""
    for f in ("ch", "num_res_blocks", "in_channels", "out_ch", "resolution"):
        if not m[f] > 0:
            raise ValueError(f"model.{f}={m[f]!r} must be > 0")
    if m.ch % 32:
        raise ValueError(f"model.ch={m.ch} must be a multiple of 32 (GroupNorm groups)")
    if not m.ch_mult or any(v <= 0 for v in m.ch_mult):
        raise ValueError(f"model.ch_mult={m.ch_mult} must be non-empty and positive")
    if m.resolution % 2 ** (len(m.ch_mult) - 1):
        raise ValueError(f"model.resolution={m.resolution} must be divisible by "
                         f"2**(len(ch_mult)-1)={2 ** (len(m.ch_mult) - 1)}")
    if not m.resamp_with_conv:
        raise ValueError("model.resamp_with_conv=False is not supported (the papers use True)")


def validate(config) -> None:
    m = config.model
    validate_unet_fields(m)
    if m.resolution != config.data.image_size:
        raise ValueError(f"model.resolution={m.resolution} differs from "
                         f"data.image_size={config.data.image_size} (a pixel-space UNet)")
    channels = config.data.get("channels", 3)
    if not channels == m.in_channels == m.out_ch:
        raise ValueError(f"a pixel-space model reads and predicts data.channels={channels} "
                         f"channels; got model.in_channels={m.in_channels}, "
                         f"model.out_ch={m.out_ch}")


def spd_features(model) -> list[str]:
    """The features BiDM's CIFAR code hooks for SPD (methods.md §2.5 CIFAR list), for any
    level count L: ``down.{i}.downsample`` (i < L−1), the conv2 of the last down block,
    ``mid.block_2.conv2`` and ``up.{i}.upsample`` (i = L−1 … 1). DDIM CIFAR-10: the 8 outputs
    down.{0,1,2}.downsample, down.3.block.1.conv2, mid.block_2.conv2, up.{3,2,1}.upsample."""
    last = model.num_levels - 1
    names = [f"down.{i}.downsample" for i in range(last)]
    names.append(f"down.{last}.block.{model.num_res_blocks - 1}.conv2")
    names.append("mid.block_2.conv2")
    names += [f"up.{i}.upsample" for i in range(last, 0, -1)]
    return names


def _block_output(model, i: int, j: int) -> str:
    return f"up.{i}.attn.{j}" if len(model.up[i].attn) else f"up.{i}.block.{j}"


def up_block_outputs(model) -> list[str]:
    """Tap names of the up path's block outputs in execution order (the LDM output_blocks:
    block j of level i ends with its attention, and the last block of a level i > 0 with the
    level's upsample)."""
    names = []
    for i in reversed(range(model.num_levels)):
        for j in range(model.num_res_blocks + 1):
            last = j == model.num_res_blocks and i != 0
            names.append(f"up.{i}.upsample" if last else _block_output(model, i, j))
    return names


def tbs_mix(model, kind: str, last_n: int = 2) -> tuple[tuple, int]:
    """TBS mixing points ((point, source, column), ...) and the column count.

    ``code`` (BiDM CIFAR code, methods.md §2.5): only up-level 1 mixes, one column; each of
    its block outputs mixes with the previous call's input of the level (``up.2.upsample``,
    or ``mid.block_2`` with 2 levels) and ``up.1.upsample`` with its own previous output.
    ``paper`` (App. A): the last ``last_n`` up-path block outputs, each with its own previous
    output and column (CIFAR 2, LDM 8)."""
    if kind == "code":
        if model.num_levels < 2:
            raise ValueError("the code TBS topology mixes up-level 1; the UNet needs >= 2 "
                             f"levels (model.ch_mult has {model.num_levels})")
        level_input = "up.2.upsample" if model.num_levels > 2 else "mid.block_2"
        mix = [(_block_output(model, 1, j), level_input, 0)
               for j in range(model.num_res_blocks + 1)]
        mix.append(("up.1.upsample", "up.1.upsample", 0))
        return tuple(mix), 1
    if kind == "paper":
        outs = up_block_outputs(model)
        if not 1 <= last_n <= len(outs):
            raise ValueError(f"distill.tbs_last_n={last_n} must be in [1, {len(outs)}] for this "
                             "UNet")
        return tuple((p, p, k) for k, p in enumerate(outs[-last_n:])), last_n
    raise ValueError(f"distill.tbs_topology={kind!r} is invalid; valid choices: code, paper")


def block_group(path: str, model_config) -> int | None:
    """BinaryDM's layer group of ``path`` (methods.md §3.2) on this UNet.

    The released code numbers the LDM UNet's TimestepEmbed blocks (input_blocks idx,
    output_blocks idx, 3 per level) and takes g = idx // 3 on the way down, g = 3 − idx // 3
    on the way up, 4 for the middle. On the DDIM UNet the same blocks are: input block
    1 + i·(R+1) + j = ``down.i.block.j`` (+ its attention), 1 + i·(R+1) + R =
    ``down.i.downsample``, output block (L−1−i)·(R+1) + j = ``up.i.block.j`` (+ attention,
    the level's upsample in its last block), R = num_res_blocks, L levels. So the group is
    the level i (the downsample of level i: i + 1, its output lives one level down), and
    the middle block is group L. Group g's features are at 2^−g of the input's scale, which
    makes groups 0 and 1 the "feature scale >= 1/2" head/tail blocks of the paper (CIFAR-10:
    32² and 16²). ``conv_in`` (input block 0) is group 0; the time MLP and ``conv_out`` are
    outside the blocks (None). Unlike the code's formula, this also holds for L != 4.
    """
    parts = path.split(".")
    if parts[0] == "conv_in":
        return 0
    if parts[0] == "mid":
        return len(model_config.ch_mult)
    if parts[0] in ("down", "up") and len(parts) > 2 and parts[1].isdigit():
        i = int(parts[1])
        return i + 1 if parts[0] == "down" and parts[2] == "downsample" else i
    return None


def num_groups(model_config) -> int:
    """L + 1 block groups: levels 0..L−1 and the middle block (CIFAR-10: 5)."""
    return len(model_config.ch_mult) + 1


def timestep_outputs(model) -> list[str]:
    """Tap names of the TimestepEmbed block outputs in execution order (LDM's input_blocks,
    middle_block, output_blocks; LRM's features): ``conv_in``, ``down.i.block.j`` (after its
    attention), ``down.i.downsample``, ``mid.block_2``, then :func:`up_block_outputs`. DDIM
    CIFAR-10: 12 + 1 + 12 = 25, as LDM-4's."""
    names = ["conv_in"]
    for i in range(model.num_levels):
        names += [f"down.{i}.block.{j}" for j in range(model.num_res_blocks)]
        if i != model.num_levels - 1:
            names.append(f"down.{i}.downsample")
    return names + ["mid.block_2"] + up_block_outputs(model)


DDIM_UNET = register_family(Family(
    name="ddim_unet", build=build, fp_layers=FP_LAYERS, binary_layers=BINARY_LAYERS,
    input_shape=input_shape, validate=validate, spd_features=spd_features, tbs_mix=tbs_mix,
    skip_patterns=("*.nin_shortcut",), edge_layers=("conv_in", "conv_out"),
    block_group=block_group, num_groups=num_groups, timestep_outputs=timestep_outputs))
