"""Default configuration: every field any mode reads, with the DDIM CIFAR-10 values.

Experiment files import ``get_config`` from here and override a few fields. Any field can be
overridden on the command line, e.g.

    python -m bidm_jax.main --config configs/default.py --workdir runs/x --config.train.lr=1e-4
"""
import ml_collections

from bidm_jax.distill.config import get_distill_config
from bidm_jax.metrics.config import get_eval_config
from bidm_jax.quant.config import get_quant_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = "train"             # default --mode when the flag is not given

    c.data = d = ml_collections.ConfigDict()
    # cifar10 | digits (embedded, no download) | image_folder | lsun_bedrooms |
    # lsun_churches | ffhq (the last four are read lazily, file by file: docs/ldm.md)
    d.dataset = "cifar10"
    d.source = "auto"            # auto | archive | npz | tfds (CIFAR-10); auto | folder | tfds
    d.path = ""                  # archive (.tar.gz or folder), npz, image folder or tfds data_dir
    d.file_list = ""             # image folders: a text file of paths relative to data.path
                                 # (CompVis bedrooms_train.txt, taming ffhqtrain.txt); '' = all
    d.split = "train"
    d.image_size = 32
    d.channels = 3               # 3 (RGB); 1 only for the digits, whose scans are grey
    d.random_flip = True
    d.interpolation = "bicubic"  # image folders: resize filter after the centre crop
                                 # (bicubic: CompVis ldm/data/lsun.py; bilinear: taming FFHQ)
    d.workers = 8                # image folders: decoding threads

    c.model = m = ml_collections.ConfigDict()
    m.name = "ddim_unet"
    m.ch = 128
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (16,)
    m.dropout = 0.1
    m.in_channels = 3
    m.out_ch = 3
    m.resolution = 32
    m.resamp_with_conv = True
    # ldm_unet only (docs/ldm.md; the DDIM family ignores them): heads = C / num_head_channels
    # when that is > 0, else num_heads; LDM-8's scale-shift norm and ResBlock up/down.
    m.num_heads = 1
    m.num_head_channels = -1
    m.use_scale_shift_norm = False
    m.resblock_updown = False
    m.dtype = "float32"          # compute dtype: float32 | bfloat16 (params stay float32)

    c.diffusion = f = ml_collections.ConfigDict()
    f.schedule = "linear"        # linear (ermongroup) | sqrt_linear (LDM)
    f.beta_start = 1e-4
    f.beta_end = 2e-2
    f.num_timesteps = 1000
    f.loss_reduction = "sum"     # sum over pixels (ermongroup/BiDM) | mean (DDPM/LDM)
    f.loss_type = "l2"           # l2 | l1 (LDM-8 churches: ``loss_type: l1``)
    f.antithetic = True
    f.sampler = "ddim"           # ddim | ddpm
    f.sample_steps = 100
    f.eta = 0.0
    f.timestep_convention = "ermongroup"  # ermongroup {0,10,..} | ldm {1,11,..}
    f.var_type = "fixedlarge"    # DDPM sampler variance: fixedlarge | fixedsmall
    f.clip_x0 = True             # DDPM sampler only (DDIM never clips)

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 128           # global, over all devices and processes
    t.num_steps = 800_000
    t.lr = 2e-4
    t.warmup_steps = 5000
    # Warm-up factor: -1 = DDPM's min(1, (s+1)/warmup_steps); >= 0 = LDM's
    # LambdaLinearScheduler, f_start + (1 - f_start)·s/warmup_steps from f_start = this.
    t.warmup_start = -1.0
    t.lr_decay = "none"          # none | linear (to 0 at num_steps, after the warm-up factor)
    t.grad_clip = 1.0
    t.adam_b1 = 0.9
    t.adam_b2 = 0.999
    t.adam_eps = 1e-8
    t.weight_decay = 0.0
    t.ema_decay = 0.9999
    t.ema_warmup = False         # LDM's LitEma: decay min(ema_decay, (1+n)/(10+n)), n updates
    t.log_every = 100
    # Stop (exit code 3, last good checkpoint kept, no final samples) after this many
    # consecutive non-finite updates; 0 = never stop (skip and count them only).
    t.max_nonfinite_streak = 20
    t.sample_every = 0           # write a sample grid every N steps (0 = only at the end)
    t.matmul_precision = "default"  # default | tensorfloat32 | float32 (= highest)

    # The frozen LDM autoencoder of a latent diffusion model (docs/ldm.md); '' = pixel space.
    c.first_stage = a = ml_collections.ConfigDict()
    a.kind = ""                  # '' | vq-f4 | kl-f8
    a.path = ""                  # a converted first_stage/ dir (python -m bidm_jax.convert.ldm)
    a.scale_factor = -1.0        # -1 = the checkpoint's (meta.json); > 0 replaces it
    # Random weights instead of first_stage.path: only for tests and benchmarks (the latents
    # mean nothing); never implied by a missing path.
    a.random_init = False
    # Architecture overrides of the kind's preset, with random_init only (tiny test models):
    # 0 / () = the preset's value.
    a.ch = 0
    a.ch_mult = ()
    a.num_res_blocks = 0
    a.n_embed = 0
    # A latent dataset written by --mode encode_latents ('' = encode each batch on the fly,
    # inside the training step); --mode encode_latents writes here ('' = {workdir}/latents).
    a.latents = ""
    a.cache_dtype = "float16"    # float16 | float32: what encode_latents stores
    a.encode_batch_size = 32     # images per encoder call in --mode encode_latents

    c.sample = s = ml_collections.ConfigDict()
    s.num_samples = 64           # written by --mode sample and at the end of training
    s.batch_size = 64
    s.seed = 1234
    s.use_ema = True
    s.grid_size = 64             # images in the PNG grid (<= num_samples)
    s.packed = ""                # sample a --mode export file: '' = no (the checkpoint),
                                 # 'auto' = {workdir}/export/packed.npz, or a path
    s.tag = ""                   # --mode sample writes samples_{tag}.npz / grid_{tag}.png and
                                 # --mode eval reads it ('' = samples.npz): presets side by side

    c.ckpt = k = ml_collections.ConfigDict()
    k.save_every = 5000
    k.max_to_keep = 2            # latest checkpoints kept ...
    k.keep_period = 50_000       # ... plus every step divisible by this (0 = none)
    k.init_from = ""             # start from this project checkpoint dir (e.g. a converted teacher)

    c.mesh = h = ml_collections.ConfigDict()
    h.data = -1                  # devices on the data axis (-1 = all)
    h.distributed = "auto"       # auto | yes | no : call jax.distributed.initialize()
    h.coordinator_address = ""   # host:port for explicit multi-process runs
    h.num_processes = 0
    h.process_id = -1
    # Multi-process runs stop instead of hanging: peers must connect within init_timeout_s,
    # and a peer silent for heartbeat_timeout_s is declared dead (docs/reliability.md).
    h.init_timeout_s = 300
    h.heartbeat_timeout_s = 100

    c.quant = get_quant_config()  # binarization method and paper/code flags
    c.quant.method = "fp"         # experiment files pick bidm, xnor, ...

    c.export = e = ml_collections.ConfigDict()  # packed 1-bit students (docs/export.md)
    e.kernel = "xla"             # packed layers run as: xla (int8 conv/dot) | pallas (1-bit kernel)
    e.pallas_backend = "auto"    # auto | gpu (Triton) | tpu (Mosaic); on a CPU: interpret mode
    # The TPU kernel's path: auto (by chip: v5e/v5p/v6e int4, TPU7x fp8, v2-v4 bf16, else
    # int8) | int4 | int8 | fp8 | bf16 (MXU operand dtypes) | popcount (VPU XNOR-popcount)
    e.tpu_operand = "auto"

    c.distill = get_distill_config()  # teacher path, distillation loss, TBS
    c.eval = get_eval_config()        # FID/sFID/IS/PR protocol and feature network
    return c
