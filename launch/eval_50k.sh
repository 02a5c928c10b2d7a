#!/usr/bin/env bash
# The papers' evaluation of one trained model: 50,000 samples with the paper's sampler
# settings (pinned per paper and dataset below), then FID / sFID / IS / precision / recall
# (and KID) against the reference statistics. The samples are tagged with the preset
# ({workdir}/samples/samples_{preset}.npz, resumable) and the metrics written to
# {workdir}/eval/metrics_{preset}.json (and metrics.json), so presets sit side by side.
# docs/metrics.md describes the metrics.
set -euo pipefail
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
usage: launch/eval_50k.sh [options] CONFIG WORKDIR [--config.FIELD=VALUE ...]

  CONFIG    the paper config the model was trained with, e.g. configs/cifar10_ddim.py
  WORKDIR   its workdir (checkpoints/ inside; samples/ and eval/ are written there)

options:
  --preset NAME      sampler preset (default: chosen from CONFIG's file name; --list)
  --list             print the presets and which configs they apply to
  --ref PATH         reference statistics .npz (eval.ref_path): a `--mode ref_stats` file or
                     an ADM reference batch (VIRTUAL_lsun_bedroom256.npz: arr_0 images and/or
                     mu/sigma). Default: {workdir}/eval/ref_<dataset>_<R>px_train_<features>.npz,
                     built from --data on first use. LSUN / FFHQ: --ref or --data is required
  --data PATH        the dataset (data.path), to build the reference statistics from
  --inception PATH   FID Inception weights, pytorch-fid's .pth or a converted .npz
                     (eval.inception_path; default: the cache, downloaded when missing)
  --proxy PATH       use the offline proxy feature network at PATH instead of Inception
                     (CIFAR-10 only; every metric is then labelled proxy_* and is not FID)
  --packed           sample the packed 1-bit export (sample.packed=auto) instead of the
                     checkpoint
  --batch N          sampling batch (sample.batch_size); changes speed, not the samples
  --skip-sample      evaluate WORKDIR/samples/samples_<preset>.npz as it is (an interrupted
                     sampling run is resumed by running the script again without it)
  --skip-eval        only sample
  --dry-run          print the commands instead of running them
  -h, --help         this text

Further --config.* overrides go to both commands; the pinned sampler fields and sample
counts cannot be overridden (use another --preset).
EOF
}

list_presets() {
  cat <<'EOF'
preset         sampler                  configs
cifar-ddim100  DDIM 100 steps, eta 0    cifar10_ddim*.py: BiDM and its W1A1 baselines and
                                        ablations (BiDM Table 1), BinaryDM and its Baseline /
                                        LSQ rows (BinaryDM Table 1), Q-DM (DDIM rows),
                                        EfficientDM, the FP teacher
qdm-ddpm1000   DDPM 1000 steps,         cifar10_ddim_qdm.py, Q-DM's headline (docs/qdm.md);
               fixedlarge, x0 clipped   pass --preset qdm-ddpm1000
bidm-ldm       DDIM 200 steps,          *_ldm*_bidm.py and the W1A1 LDM baselines (BiDM
               eta 1 (bedrooms, FFHQ)   Table 2: 200 steps; eta is not stated, LDM's
               or 0 (churches)          sampling default / README value per dataset)
binarydm-ldm   DDIM 100 steps,          *_ldm*_binarydm*.py, *_ldm*_lsq.py (BinaryDM
               eta as bidm-ldm          Table 2: 100 steps)
ldm-readme     DDIM 200 steps eta 1     *_ldm*_teacher.py: the LDM README's FP numbers
               (bedrooms, FFHQ); 400
               steps eta 0 (churches)
EOF
}

preset="" ref="" data="" inception="" proxy="" packed=0 batch="" do_sample=1 do_eval=1 pos=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --preset) need_value "$1" $#; preset=$2; shift 2 ;;
    --list) list_presets; exit 0 ;;
    --ref) need_value "$1" $#; ref=$2; shift 2 ;;
    --data) need_value "$1" $#; data=$2; shift 2 ;;
    --inception) need_value "$1" $#; inception=$2; shift 2 ;;
    --proxy) need_value "$1" $#; proxy=$2; shift 2 ;;
    --packed) packed=1; shift ;;
    --batch) need_value "$1" $#; batch=$2; shift 2 ;;
    --skip-sample) do_sample=0; shift ;;
    --skip-eval) do_eval=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --config.*|--mode=*) pos+=("$1"); shift ;;
    -*) die_usage "unknown option $1" ;;
    *) pos+=("$1"); shift ;;
  esac
done
[[ ${#pos[@]} -ge 2 ]] || die_usage "CONFIG and WORKDIR are required"
config=${pos[0]}; workdir=${pos[1]}
extra=("${pos[@]:2}")
check_config "$config"
[[ $do_sample == 1 || $do_eval == 1 ]] || die_usage "--skip-sample and --skip-eval together leave nothing to do"
[[ -z $batch || $batch =~ ^[1-9][0-9]*$ ]] || die_usage "--batch must be a positive whole number, got '$batch'"
[[ -z $inception || -z $proxy ]] || die_usage "--inception and --proxy exclude each other"
for a in ${extra[@]+"${extra[@]}"}; do
  [[ $a == --config.* ]] || die_usage "extra arguments must be --config.FIELD=VALUE overrides, got '$a'"
  case ${a%%=*} in
    --config.diffusion.sampler|--config.diffusion.sample_steps|--config.diffusion.eta|\
    --config.diffusion.var_type|--config.diffusion.clip_x0|--config.sample.num_samples|\
    --config.eval.num_samples|--config.sample.tag)
      die_usage "${a%%=*} is pinned by the preset; choose another --preset instead" ;;
  esac
done

# The dataset and the paper, from the config's file name (configs/<dataset>_<model>_<method>.py).
stem=$(basename "$config" .py)
case $stem in
  cifar10_*) dataset=cifar10 ;;
  lsun_bedrooms_*) dataset=bedrooms ;;
  lsun_churches_*) dataset=churches ;;
  ffhq_*) dataset=ffhq ;;
  *) die_usage "'$config' is not a paper config (cifar10_*, lsun_bedrooms_*, lsun_churches_*, ffhq_*)" ;;
esac
if [[ -z $preset ]]; then
  case $stem in
    cifar10_ddim|cifar10_ddim_*) preset=cifar-ddim100 ;;
    *_ldm*_teacher) preset=ldm-readme ;;
    *_ldm*_binarydm*|*_ldm*_lsq) preset=binarydm-ldm ;;
    *_ldm*_bidm|*_ldm*_xnor*|*_ldm*_dorefa|*_ldm*_reactnet|*_ldm*_reste|*_ldm*_bbcu) preset=bidm-ldm ;;
    *) die_usage "no default preset for '$config' (its paper compares it under several samplers); pass --preset (--list)" ;;
  esac
fi

# eta 1 for bedrooms and FFHQ, 0 for churches: the LDM README's settings per dataset.
ldm_eta() { [[ $dataset == churches ]] && echo 0.0 || echo 1.0; }
case $preset in
  cifar-ddim100) sampler=ddim steps=100 eta=0.0 ;;
  qdm-ddpm1000) sampler=ddpm steps=1000 eta=0.0 ;;
  bidm-ldm) sampler=ddim steps=200 eta=$(ldm_eta) ;;
  binarydm-ldm) sampler=ddim steps=100 eta=$(ldm_eta) ;;
  ldm-readme)
    sampler=ddim
    if [[ $dataset == churches ]]; then steps=400 eta=0.0; else steps=200 eta=1.0; fi ;;
  *) die_usage "unknown --preset '$preset' (--list shows them)" ;;
esac
if [[ $dataset == cifar10 && $preset != cifar-ddim100 && $preset != qdm-ddpm1000 ]] ||
   [[ $dataset != cifar10 && ($preset == cifar-ddim100 || $preset == qdm-ddpm1000) ]]; then
  die_usage "--preset $preset is not for $dataset configs (--list)"
fi
if [[ $dataset != cifar10 ]]; then
  # LSUN / FFHQ have no default location: the reference comes from a file (an ADM batch or
  # a ref_stats file) or is built from the dataset (docs/metrics.md).
  [[ $do_eval == 0 || -n $ref || -n $data ]] || die_usage "$dataset needs --ref (an ADM reference batch or a --mode ref_stats file) or --data (the training images to build it from; docs/metrics.md)"
  [[ -z $proxy ]] || die_usage "--proxy is a CIFAR-10 classifier; it cannot evaluate $dataset"
fi

base=(python3 -m bidm_jax.main --config "$config" --workdir "$workdir")
# The preset names the samples and the metrics: two presets in one workdir both stay.
sample_flags=(--mode sample --config.sample.num_samples=50000
              "--config.diffusion.sampler=$sampler" "--config.diffusion.sample_steps=$steps"
              "--config.diffusion.eta=$eta" "--config.sample.tag=$preset")
# Pinned explicitly for DDPM: the variance and the clipping are part of Q-DM's protocol.
[[ $sampler == ddpm ]] && sample_flags+=(--config.diffusion.var_type=fixedlarge --config.diffusion.clip_x0=True)
[[ -n $batch ]] && sample_flags+=("--config.sample.batch_size=$batch")
[[ $packed == 1 ]] && sample_flags+=(--config.sample.packed=auto)

eval_flags=(--mode eval --config.eval.num_samples=50000 "--config.sample.tag=$preset")
[[ -n $ref ]] && eval_flags+=("--config.eval.ref_path=$ref")
[[ -n $data ]] && eval_flags+=("--config.data.path=$data")
[[ -n $inception ]] && eval_flags+=("--config.eval.inception_path=$inception")
[[ -n $proxy ]] && eval_flags+=(--config.eval.features=proxy "--config.eval.proxy_path=$proxy")

[[ $DRY_RUN == 1 ]] && echo "# $stem: preset $preset ($sampler, $steps steps, eta $eta), 50,000 samples -> $workdir/samples/samples_$preset.npz, $workdir/eval/metrics_$preset.json"
if [[ $do_sample == 1 ]]; then
  run "${base[@]}" "${sample_flags[@]}" ${extra[@]+"${extra[@]}"}
fi
if [[ $do_eval == 1 ]]; then
  # writes $workdir/eval/metrics_$preset.json (and metrics.json, the latest evaluation)
  run "${base[@]}" "${eval_flags[@]}" ${extra[@]+"${extra[@]}"}
fi
