"""The reduced-scale CIFAR-10 reproduction driver (launch/repro_cifar10_small.sh): its --tiny
mode end to end on the CPU, resume, the job scheduler and the report's arithmetic."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bidm_jax.repro import jobs, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "repro_cifar10_small.sh")
ALL_STUDENTS = ["bidm", "xnor", "reactnet", "xnor++", "reste", "dorefa", "bbcu", "xnor_tbs",
                "xnor_spd", "binarydm", "binarydm_baseline", "lsq_w2a4", "qdm_w4a4",
                "lsq_w4a4", "efficientdm_w4a4"]
# The CI run drives one student of each kind through every phase (a W1A1 method with TBS and
# SPD, its plain baseline, W1A4 with LRM, W4A4 with NeM): each student is a
# separate process of ~30 s on 2 cores, and every method's own distillation is tested in
# tests/methods and tests/distill. The full default set is what `--tiny` runs without
# --models (checked by test_default_students_are_every_row).
STUDENTS = ["bidm", "xnor", "binarydm", "qdm_w4a4"]


def _env():
    env = dict(os.environ)
    # The jobs are plain single-device CPU processes (not the test session's 8 fake devices).
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _driver(*args, timeout=900):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    proc = _driver("--tiny", "--cpu", "--workdir", str(work), "--models", ",".join(STUDENTS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


def test_tiny_run_writes_every_model(tiny_run):
    work, _ = tiny_run
    res_dir = work / "results"
    with open(res_dir / "results.json") as f:
        res = json.load(f)
    models = {e["model"]: e for e in res["models"]}
    assert list(models) == ["teacher"] + STUDENTS
    for name, e in models.items():
        assert e["status"] == "ok", name
        assert e["num_samples"] == res["budget"]["num_samples"] == 16
        for k in ("proxy_fid", "proxy_sfid", "proxy_is", "proxy_precision", "proxy_recall"):
            assert np.isfinite(e["metrics"][k]), (name, k)
        assert e["train_seconds"] > 0 and e["job_seconds"] > 0
        if name != "teacher":
            want = {"binarydm": "W1A4", "qdm_w4a4": "W4A4"}
            assert e["bits"] == want.get(name, "W1A1") and np.isfinite(e["psnr_vs_teacher_db"])
            # One identical budget for every student.
            assert e["budget"] == models["bidm"]["budget"]
    assert models["bidm"]["tbs"] and models["bidm"]["distill_loss"] == "spd"
    assert not models["xnor"]["tbs"] and models["xnor"]["distill_loss"] == "none"
    assert models["binarydm"]["distill_loss"] == "lrm"
    assert models["qdm_w4a4"]["distill_loss"] == "nem"
    s = res["summary"]
    # Each ordering ranks the rows that ran, among the paper's rows of that table.
    for table, ran in (("cifar10", {"bidm", "xnor"}), ("ablation", {"bidm", "xnor"}),
                       ("w1a4", {"binarydm"}), ("w4a4", {"qdm_w4a4"})):
        found = s[f"{table}_ordering_found"]
        assert set(found) == ran & set(s[f"{table}_ordering_paper"]), table
        fids = [models[m]["metrics"]["proxy_fid"] for m in found]
        assert fids == sorted(fids), table
    fid = {m: e["metrics"]["proxy_fid"] for m, e in models.items()}
    assert s["bidm_over_xnor_proxy_fid"] == pytest.approx(fid["bidm"] / fid["xnor"])
    png = res_dir / "samples.png"
    assert 0 < os.path.getsize(png) <= 1 << 20
    text = (res_dir / "README.md").read_text()
    for name in models:
        assert f"| {report.LABELS[name]} |" in text
    assert "Tiny mode" in text and "launch/repro_cifar10_small.sh --tiny" in text


def test_default_students_are_every_row():
    """Without --models the driver runs every student of the three papers' tables."""
    from bidm_jax.configlib import sibling

    mod = sibling(os.path.join(ROOT, "configs", "x.py"), "repro_cifar10_small")
    assert list(mod.STUDENTS) == ALL_STUDENTS
    assert set(ALL_STUDENTS) <= set(report.LABELS)


def test_tiny_run_same_noise_for_every_model(tiny_run):
    """Every model samples from the same x_T: a student sharing all the teacher's weights
    would reproduce its images; here the check is that the files line up one to one."""
    work, _ = tiny_run
    shapes = set()
    for m in ["teacher"] + STUDENTS:
        tag = "train" if m == "teacher" else "distill"
        with np.load(work / m / "samples" / f"samples_{tag}.npz") as z:
            shapes.add(z["arr_0"].shape)
    assert shapes == {(16, 32, 32, 3)}
    cfg = (work / "logs" / "bidm.log").read_text()
    assert "--config.distill.teacher=" + str(work / "teacher" / "checkpoints") in cfg


def test_rerun_resumes_without_work(tiny_run):
    work, _ = tiny_run
    proc = _driver("--tiny", "--cpu", "--workdir", str(work), "--models", ",".join(STUDENTS),
                   "--phases", "teacher,students,report", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already done") == 1 + 1 + len(STUDENTS)  # teacher, proxy


def test_missing_data_is_a_clean_error(tmp_path):
    proc = _driver("--data", str(tmp_path / "nope.npz"), "--workdir", str(tmp_path / "w"),
                   "--cpu", timeout=120)
    assert proc.returncode == 2
    assert "no CIFAR-10 at --data" in proc.stderr and "Traceback" not in proc.stderr
    proc = _driver("--workdir", str(tmp_path / "w"), timeout=120)
    assert proc.returncode == 2 and "--data is required" in proc.stderr


def test_assign_is_longest_job_first():
    js = [jobs.Job(n, [], "", cost=c) for n, c in
          [("a", 5), ("b", 4), ("c", 3), ("d", 3), ("e", 2), ("f", 2), ("g", 1)]]
    plan = jobs.assign(js, ["0", "1"])
    assert [j.name for j in plan["0"]] == ["a", "d", "f"]
    assert [j.name for j in plan["1"]] == ["b", "c", "e", "g"]
    assert sum(j.cost for j in plan["0"]) == sum(j.cost for j in plan["1"]) == 10


def test_failed_job_is_reported_and_others_run(tmp_path):
    ok = jobs.Job("ok", [jobs.python_cmd("-c", "print('fine')")], str(tmp_path / "ok.log"))
    bad = jobs.Job("bad", [jobs.python_cmd("-c", "import sys; sys.exit(3)"),
                           jobs.python_cmd("-c", "open('never', 'w')")],
                   str(tmp_path / "bad.log"))
    res = {r.name: r for r in jobs.run_jobs([bad, ok], ["cpu"], 2, gpus=False)}
    assert res["ok"].ok and not res["bad"].ok and "exit 3" in res["bad"].error
    assert "fine" in (tmp_path / "ok.log").read_text()
    assert not os.path.exists("never")


def test_psnr_known_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1                       # MSE 1 -> 20 log10(255) = 48.13 dB
    p = report.psnr(a, b)
    assert p[0] == pytest.approx(20 * np.log10(255.0))
    assert np.isinf(p[1])


def test_job_failing_while_sharing_is_retried_alone(tmp_path):
    """First attempt fails (as an out-of-memory job would), the retry alone succeeds."""
    marker = tmp_path / "tried"
    flaky = jobs.Job("flaky", [jobs.python_cmd(
        "-c", f"import os,sys; p={str(marker)!r}; "
              "sys.exit(0) if os.path.exists(p) else (open(p, 'w'), sys.exit(1))")],
        str(tmp_path / "flaky.log"))
    other = jobs.Job("other", [jobs.python_cmd("-c", "pass")], str(tmp_path / "other.log"))
    res = {r.name: r for r in jobs.run_jobs([flaky, other], ["cpu"], 2, gpus=False)}
    assert res["flaky"].ok and res["other"].ok
    assert (tmp_path / "flaky.log").read_text().count("$ ") == 2
    marker.unlink()
    res = jobs.run_jobs([flaky], ["cpu"], 2, gpus=False, retry=False)
    assert not res[0].ok


def test_diagnostic_models_override_one_piece_and_are_opt_in(tmp_path):
    """DIAGNOSTICS entries build their base method with one quant override and the same
    budget as the students; they are not part of the default set, and unknown names fail."""
    from bidm_jax.configlib import sibling

    mod = sibling(os.path.join(ROOT, "configs", "x.py"), "repro_cifar10_small")
    assert not set(mod.DIAGNOSTICS) & set(mod.STUDENTS)
    base = mod.get_config("xnor")
    for name, (method, _, _, overrides) in mod.DIAGNOSTICS.items():
        c = mod.get_config(name)
        assert c.quant.method == method and report.LABELS[name] != name
        for key, value in overrides.items():
            assert c.quant[key] == value != base.quant[key]
        assert (c.train.num_steps, c.train.batch_size) == (base.train.num_steps,
                                                           base.train.batch_size)
    with pytest.raises(ValueError, match="xnor_nok"):
        mod.get_config("xnor_nothing")
    proc = _driver("--tiny", "--cpu", "--workdir", str(tmp_path / "w"), "--models",
                   "xnor,nope", timeout=120)
    assert proc.returncode != 0 and "unknown --models ['nope']" in proc.stderr
    assert "xnor_rprelu" in proc.stderr
