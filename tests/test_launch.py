"""The launch scripts' dry runs: each prints the exact commands (and manifests) it would run,
needs none of gcloud / xpk / kubectl (stand-ins that fail are first on PATH), and refuses bad
arguments with exit code 2 and its usage text."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
CIFAR_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("cifar10_ddim*.py"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """PATH with failing stand-ins for the cloud tools: a dry run that calls one fails."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in ("gcloud", "xpk", "kubectl", "gcsfuse"):
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\necho '{tool} must not run in a dry run' >&2\nexit 99\n")
        stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def launch(env, script, *args, ok=True):
    proc = subprocess.run([str(LAUNCH / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert "must not run" not in proc.stderr
    return proc


def bad(env, script, *args, message=""):
    proc = launch(env, script, *args, ok=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "usage: launch/" in proc.stderr and "error:" in proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


def lines_with(text, word):
    return [line for line in text.splitlines() if word in line]


# --- Cloud TPU VMs: tpu-vm ssh --worker=all ------------------------------------------------

def test_tpu_pod_dry_run(env):
    out = launch(env, "tpu_pod.sh", "--dry-run", "bidm-v5e", "us-east5-b",
                 "configs/cifar10_ddim.py", "gs://my-bucket/runs/bidm",
                 "--config.train.num_steps=100").stdout
    scp, = lines_with(out, "tpu-vm scp")
    assert "--worker=all" in scp and "bidm-v5e:bidm_jax_src.tgz" in scp
    ssh, = lines_with(out, "tpu-vm ssh")
    assert "bidm-v5e --zone us-east5-b --worker=all" in ssh
    prog, = lines_with(out, "python3 -m bidm_jax.main")
    assert ("--config configs/cifar10_ddim.py --workdir /mnt/gcs/my-bucket/runs/bidm "
            "--config.mesh.distributed=yes --config.train.num_steps=100") in prog
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs/my-bucket" in out
    assert "run.lock" not in out and "nohup" not in out
    # The printed ssh command is one shell word sequence that parses back.
    assert shlex.split(out[out.index("gcloud compute tpus tpu-vm ssh"):])[-2] == "--command"


def test_tpu_pod_options(env):
    out = launch(env, "tpu_pod.sh", "--dry-run", "--detach", "--take-over-lock",
                 "--no-install", "--project", "p1", "tpu1", "zone1",
                 "configs/cifar10_ddim_xnor.py", "/mnt/nfs/runs/xnor").stdout
    assert "tpu-vm scp" not in out and "pip install" not in out and "gcsfuse" not in out
    assert "--worker=all --project p1" in out
    assert "rm -f /mnt/nfs/runs/xnor/run.lock" in out
    assert "setsid nohup python3 -m bidm_jax.main --config configs/cifar10_ddim_xnor.py" in out


@pytest.mark.parametrize("args, message", [
    ((), "required"),
    (("tpu", "zone", "configs/nosuch.py", "/w"), "no config file"),
    (("tpu", "zone", "configs/cifar10_ddim.py", "runs/relative"), "absolute path"),
    (("tpu", "zone", "configs/cifar10_ddim.py", "gs://bucket-only"), "gs://BUCKET/PATH"),
    (("tpu", "zone", "configs/cifar10_ddim.py", "/w", "train.lr=1"), "--config.FIELD=VALUE"),
    (("--nosuch", "tpu", "zone", "configs/cifar10_ddim.py", "/w"), "unknown option"),
])
def test_tpu_pod_bad_args(env, args, message):
    bad(env, "tpu_pod.sh", "--dry-run", *args, message=message)


# --- queued resources ---------------------------------------------------------------------

def test_queued_resources_dry_run(env):
    q = ("--name", "bidm-v6e", "--zone", "us-east5-b", "--dry-run")
    out = launch(env, "tpu_queued.sh", "create", "--type", "v6e-16", "--spot", *q).stdout
    assert out.strip() == ("gcloud compute tpus queued-resources create bidm-v6e --node-id "
                           "bidm-v6e-node --zone us-east5-b --accelerator-type v6e-16 "
                           "--runtime-version v2-alpha-tpuv6e --spot")
    for tpu_type, runtime in (("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-32", "v2-alpha-tpuv5")):
        out = launch(env, "tpu_queued.sh", "create", "--type", tpu_type, *q).stdout
        assert f"--accelerator-type {tpu_type} --runtime-version {runtime}" in out
    out = launch(env, "tpu_queued.sh", "status", *q).stdout
    assert "queued-resources describe bidm-v6e --zone us-east5-b" in out
    out = launch(env, "tpu_queued.sh", "wait", *q).stdout
    assert "--format 'value(state.state)'" in out and "ACTIVE" in out
    out = launch(env, "tpu_queued.sh", "delete", *q).stdout
    assert "queued-resources delete bidm-v6e --zone us-east5-b --force --quiet" in out
    # run: the same --worker=all launch on the queued resource's node.
    out = launch(env, "tpu_queued.sh", "run", *q, "configs/cifar10_ddim.py",
                 "gs://b/runs/bidm", "--take-over-lock").stdout
    ssh, = lines_with(out, "tpu-vm ssh")
    assert "bidm-v6e-node --zone us-east5-b --worker=all" in ssh
    assert "--workdir /mnt/gcs/b/runs/bidm --config.mesh.distributed=yes" in out
    assert "rm -f /mnt/gcs/b/runs/bidm/run.lock" in out


@pytest.mark.parametrize("args, message", [
    ((), "COMMAND"),
    (("start", "--name", "a", "--zone", "z"), "unknown command"),
    (("create", "--zone", "z"), "--name"),
    (("create", "--name", "a"), "--zone"),
    (("create", "--name", "a", "--zone", "z"), "--type"),
    (("create", "--name", "Bad_Name", "--zone", "z", "--type", "v6e-16"), "lower-case"),
    (("create", "--name", "a", "--zone", "z", "--type", "v4-32"), "--runtime"),
    (("run", "--name", "a", "--zone", "z", "configs/cifar10_ddim.py"), "CONFIG and WORKDIR"),
])
def test_queued_resources_bad_args(env, args, message):
    bad(env, "tpu_queued.sh", *args, "--dry-run", message=message)


# --- GKE JobSet and XPK -------------------------------------------------------------------

@pytest.mark.parametrize("tpu, accel, topo, hosts", [
    ("v5e-16", "tpu-v5-lite-podslice", "4x4", 4), ("v6e-16", "tpu-v6e-slice", "4x4", 4),
    ("v5p-32", "tpu-v5p-slice", "2x2x4", 4)])
def test_gke_manifest(env, tpu, accel, topo, hosts):
    yaml = pytest.importorskip("yaml")
    out = launch(env, "gke_tpu.sh", "manifest", "--name", "bidm-c10", "--tpu", tpu,
                 "--image", "img:1", "--service-account", "ksa", "configs/cifar10_ddim.py",
                 "gs://my-bucket/runs/bidm", "--config.train.num_steps=5").stdout
    doc = yaml.safe_load(out)
    assert doc["kind"] == "JobSet" and doc["spec"]["failurePolicy"]["maxRestarts"] == 3
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == hosts
    pod = job["template"]
    assert pod["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": accel,
                                    "cloud.google.com/gke-tpu-topology": topo}
    assert spec["serviceAccountName"] == "ksa"
    container, = spec["containers"]
    assert container["image"] == "img:1"
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    script = container["command"][-1]
    assert ("python3 -m bidm_jax.main --config configs/cifar10_ddim.py --workdir "
            "/mnt/gcs/my-bucket/runs/bidm --config.mesh.distributed=yes "
            "--config.train.num_steps=5") in script
    assert "rm -f /mnt/gcs/my-bucket/runs/bidm/run.lock" in script  # restarts take it over
    volume, = spec["volumes"]
    assert volume["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
    assert volume["csi"]["volumeAttributes"]["bucketName"] == "my-bucket"
    assert container["volumeMounts"][0]["mountPath"] == "/mnt/gcs/my-bucket"


def test_gke_apply_logs_delete(env):
    out = launch(env, "gke_tpu.sh", "apply", "--dry-run", "--name", "bidm-c10", "--image",
                 "img:1", "--max-restarts", "0", "configs/cifar10_ddim.py",
                 "/mnt/filestore/runs/bidm").stdout
    assert out.startswith("kubectl apply -f - <<'EOF'\napiVersion: jobset.x-k8s.io/v1alpha2")
    assert "maxRestarts: 0" in out and "run.lock" not in out and "gcsfuse" not in out
    assert "--workdir /mnt/filestore/runs/bidm --config.mesh.distributed=yes" in out
    out = launch(env, "gke_tpu.sh", "logs", "--dry-run", "--name", "bidm-c10").stdout
    assert "kubectl logs -f --prefix" in out and "jobset-name=bidm-c10" in out
    out = launch(env, "gke_tpu.sh", "delete", "--dry-run", "--name", "bidm-c10").stdout
    assert out.strip() == "kubectl delete jobset bidm-c10"


def test_xpk_dry_run(env):
    out = launch(env, "gke_tpu.sh", "xpk-create", "--dry-run", "--name", "bidm-c10",
                 "--cluster", "tpu-cluster", "--tpu", "v5e-16", "--storage", "bidm-bucket",
                 "--project", "p1", "--zone", "us-east5-b", "configs/cifar10_ddim.py",
                 "gs://my-bucket/runs/bidm").stdout
    words = shlex.split(out)
    assert words[:3] == ["xpk", "workload", "create"]
    for flag, value in (("--cluster", "tpu-cluster"), ("--workload", "bidm-c10"),
                        ("--tpu-type", "v5litepod-16"), ("--num-slices", "1"),
                        ("--storage", "bidm-bucket"), ("--max-restarts", "3"),
                        ("--script-dir", str(ROOT))):
        assert words[words.index(flag) + 1] == value
    assert "--project=p1" in words and "--zone=us-east5-b" in words
    command = words[words.index("--command") + 1]
    assert 'pip install -q -e . "jax[tpu]"' in command
    assert ("python3 -m bidm_jax.main --config configs/cifar10_ddim.py --workdir "
            "/mnt/gcs/my-bucket/runs/bidm --config.mesh.distributed=yes") in command
    out = launch(env, "gke_tpu.sh", "xpk-delete", "--dry-run", "--name", "bidm-c10",
                 "--cluster", "tpu-cluster").stdout
    assert out.strip() == "xpk workload delete --cluster tpu-cluster --workload bidm-c10"


@pytest.mark.parametrize("args, message", [
    ((), "COMMAND"),
    (("manifest", "configs/cifar10_ddim.py", "/w"), "--name"),
    (("manifest", "--name", "x", "configs/cifar10_ddim.py"), "CONFIG and WORKDIR"),
    (("manifest", "--name", "x", "--tpu", "v4-8", "configs/cifar10_ddim.py", "/w"), "--tpu"),
    (("apply", "--name", "x", "configs/cifar10_ddim.py", "/w"), "--image"),
    (("xpk-create", "--name", "x", "configs/cifar10_ddim.py", "/w"), "--cluster"),
    (("xpk-create", "--name", "x", "--cluster", "c", "configs/cifar10_ddim.py", "gs://b/w"),
     "--storage"),
    (("manifest", "--name", "x", "--max-restarts", "many", "configs/cifar10_ddim.py", "/w"),
     "whole number"),
])
def test_gke_bad_args(env, args, message):
    bad(env, "gke_tpu.sh", *args, "--dry-run", message=message)


# --- 50k-sample evaluation ----------------------------------------------------------------

def sample_and_eval(out):
    sample, = lines_with(out, "--mode sample")
    evaluate, = lines_with(out, "--mode eval")
    return sample, evaluate


@pytest.mark.parametrize("config", CIFAR_CONFIGS)
def test_eval_cifar10_configs(env, config):
    out = launch(env, "eval_50k.sh", "--dry-run", f"configs/{config}", "runs/x",
                 "--ref", "refs/cifar10_train_inception.npz", "--inception",
                 "weights/pt_inception-2015-12-05-6726825d.pth").stdout
    sample, evaluate = sample_and_eval(out)
    assert f"--config configs/{config} --workdir runs/x --mode sample" in sample
    assert ("--config.sample.num_samples=50000 --config.diffusion.sampler=ddim "
            "--config.diffusion.sample_steps=100 --config.diffusion.eta=0.0") in sample
    assert f"--config configs/{config} --workdir runs/x --mode eval" in evaluate
    assert "--config.eval.num_samples=50000" in evaluate
    assert "--config.eval.ref_path=refs/cifar10_train_inception.npz" in evaluate
    assert "--config.eval.inception_path=weights/pt_inception-2015-12-05-6726825d.pth" in evaluate
    # The preset tags the samples and the metrics (two presets in one workdir both stay).
    assert "--config.sample.tag=cifar-ddim100" in sample
    assert "--config.sample.tag=cifar-ddim100" in evaluate
    assert "runs/x/eval/metrics_cifar-ddim100.json" in out and " cp " not in out


def test_eval_qdm_ddpm_and_proxy(env):
    out = launch(env, "eval_50k.sh", "--dry-run", "--preset", "qdm-ddpm1000", "--proxy",
                 "runs/p/proxy/proxy_features.npz", "--data", "cifar-10-python.tar.gz",
                 "--batch", "1000", "--packed", "configs/cifar10_ddim_qdm.py", "runs/qdm").stdout
    sample, evaluate = sample_and_eval(out)
    assert ("--config.diffusion.sampler=ddpm --config.diffusion.sample_steps=1000" in sample
            and "--config.diffusion.var_type=fixedlarge --config.diffusion.clip_x0=True" in sample)
    assert "--config.sample.batch_size=1000" in sample
    assert "--config.sample.packed=auto" in sample
    assert ("--config.eval.features=proxy --config.eval.proxy_path=runs/p/proxy/proxy_features.npz"
            in evaluate and "--config.data.path=cifar-10-python.tar.gz" in evaluate)
    assert "metrics_qdm-ddpm1000.json" in out


@pytest.mark.parametrize("name, steps, eta, preset", [
    ("lsun_bedrooms_ldm4_bidm.py", 200, "1.0", "bidm-ldm"),
    ("ffhq_ldm4_bidm.py", 200, "1.0", "bidm-ldm"),
    ("lsun_churches_ldm8_bidm.py", 200, "0.0", "bidm-ldm"),
    ("lsun_churches_ldm8_xnor.py", 200, "0.0", "bidm-ldm"),
    ("lsun_bedrooms_ldm4_binarydm.py", 100, "1.0", "binarydm-ldm"),
    ("lsun_bedrooms_ldm4_teacher.py", 200, "1.0", "ldm-readme"),
    ("lsun_churches_ldm8_teacher.py", 400, "0.0", "ldm-readme"),
])
def test_eval_ldm_presets(env, tmp_path, name, steps, eta, preset):
    config = tmp_path / name  # stands in for the config file: only its name is read here
    config.write_text("")
    out = launch(env, "eval_50k.sh", "--dry-run", config, "runs/ldm", "--ref",
                 "refs/VIRTUAL_lsun.npz").stdout
    sample, evaluate = sample_and_eval(out)
    assert (f"--config.sample.num_samples=50000 --config.diffusion.sampler=ddim "
            f"--config.diffusion.sample_steps={steps} --config.diffusion.eta={eta}") in sample
    assert "--config.eval.ref_path=refs/VIRTUAL_lsun.npz" in evaluate
    assert f"metrics_{preset}.json" in out


def test_eval_list_and_skip(env):
    assert "qdm-ddpm1000" in launch(env, "eval_50k.sh", "--list").stdout
    out = launch(env, "eval_50k.sh", "--dry-run", "--skip-eval",
                 "configs/cifar10_ddim.py", "runs/x").stdout
    assert "--mode sample" in out and "--mode eval" not in out


@pytest.mark.parametrize("args, message", [
    ((), "required"),
    (("configs/cifar10_ddim.py",), "required"),
    (("configs/nosuch.py", "runs/x"), "no config file"),
    (("configs/quickstart.py", "runs/x"), "not a paper config"),
    (("configs/cifar10_ddim.py", "runs/x", "--config.diffusion.sample_steps=10"), "pinned"),
    (("configs/cifar10_ddim.py", "runs/x", "--config.sample.num_samples=10"), "pinned"),
    (("configs/cifar10_ddim.py", "runs/x", "--config.sample.tag=x"), "pinned"),
    (("--preset", "bidm-ldm", "configs/cifar10_ddim.py", "runs/x"), "not for cifar10"),
    (("--preset", "nosuch", "configs/cifar10_ddim.py", "runs/x"), "unknown --preset"),
    (("--batch", "0", "configs/cifar10_ddim.py", "runs/x"), "--batch"),
    (("--proxy", "p.npz", "--inception", "i.pth", "configs/cifar10_ddim.py", "runs/x"),
     "exclude"),
])
def test_eval_bad_args(env, args, message):
    bad(env, "eval_50k.sh", "--dry-run", *args, message=message)


def test_eval_ldm_needs_reference(env, tmp_path):
    config = tmp_path / "lsun_churches_ldm8_bidm.py"
    config.write_text("")
    bad(env, "eval_50k.sh", "--dry-run", config, "runs/x", message="--ref")
    out = launch(env, "eval_50k.sh", "--dry-run", config, "runs/x", "--data", "d/churches").stdout
    assert "--config.data.path=d/churches" in sample_and_eval(out)[1]


def test_eval_cifar10_all(env, tmp_path):
    for name in ("cifar10_ddim", "cifar10_ddim_xnor", "cifar10_ddim_qdm"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    proc = launch(env, "eval_cifar10_all.sh", "--dry-run", "--with-qdm-ddpm", "--ref",
                  "r.npz", tmp_path)
    samples = lines_with(proc.stdout, "--mode sample")
    assert len(samples) == 4  # three workdirs, Q-DM twice
    assert all("--config.sample.num_samples=50000" in s for s in samples)
    assert "--config.diffusion.sampler=ddpm" in samples[-1]
    assert "# skip cifar10_ddim_binarydm" in proc.stderr
    assert f"{tmp_path}/cifar10_ddim_qdm/eval/metrics_qdm-ddpm1000.json" in proc.stdout
    bad(env, "eval_cifar10_all.sh", "--dry-run", "--only", "nosuch", tmp_path,
        message="unknown config")
    bad(env, "eval_cifar10_all.sh", "--dry-run", message="RUNS")
