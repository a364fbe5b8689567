"""The TPU VM job scripts in experiments/tpu_vm/, run against a fake ``gcloud`` that records its calls."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "tpu_vm", "*.sh")))
RECIPE = "experiments/bert_base_phase1_lamb.flags"

FAKE_GCLOUD = """#!{python}
# Records each call as a JSON line; describe and the exit-status query answer from queues of canned replies.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_DIR"] + "/calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
def pop(name, default):
    path = os.path.join(os.environ["FAKE_GCLOUD_DIR"], name)
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    open(path, "w").write("\\n".join(lines[1:]))
    return lines[0] if lines else default
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    print(pop("states", "READY"))
elif args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    print(pop("queued_states", "ACTIVE"))
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and any("exit_status 2>" in a for a in args):
    print(pop("statuses", "0"))
"""


def test_scripts_parse():
    assert {os.path.basename(p) for p in SCRIPTS} >= {"common.sh", "create.sh", "install.sh", "launch.sh",
                                                       "logs.sh", "delete.sh", "run_job.sh"}
    for path in SCRIPTS:
        proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_DIR": str(tmp_path),
           "POLL_SECONDS": "0"}

    def run(script, *args, states=(), statuses=(), queued_states=()):
        (tmp_path / "states").write_text("\n".join(states))
        (tmp_path / "queued_states").write_text("\n".join(queued_states))
        (tmp_path / "statuses").write_text("\n".join(statuses))
        calls = tmp_path / "calls.jsonl"
        if calls.exists():
            calls.unlink()
        proc = subprocess.run(["bash", os.path.join(ROOT, "experiments", "tpu_vm", script), *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=30)
        recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        return proc, recorded

    return run


def _kind(call):
    """A short name of a gcloud call: 'create', 'ssh all: <command>', ..."""
    verb = call[3]
    if call[2] == "queued-resources":
        return f"queued {verb}"
    if verb == "ssh":
        worker = next(a.split("=", 1)[1] for a in call if a.startswith("--worker="))
        command = next(a.split("=", 1)[1] for a in call if a.startswith("--command="))
        return f"ssh {worker}: {command}"
    return verb


def test_a_preempted_job_is_recreated_relaunched_and_deleted(fake_gcloud):
    proc, calls = fake_gcloud("run_job.sh", "--name=job1", "--zone=us-central2-b", "--accelerator_type=v4-32",
                              "--provisioning=spot", f"--flagfile={RECIPE}",
                              "--package=git+https://example.org/bertgpt_jax.git",
                              states=["READY", "PREEMPTED", "READY"], statuses=["running", "0"])
    assert proc.returncode == 0, proc.stderr
    kinds = [_kind(c) for c in calls]
    launch = [k for k in kinds if "bertgpt_jax.pretrain" in k]
    install = [k for k in kinds if "pip install" in k]
    one_slice = ["create", install[0], "scp", launch[0]]
    assert kinds == [*one_slice, "describe", "ssh 0: cat $HOME/bertgpt_job/exit_status 2>/dev/null || echo running",
                     "ssh 0: tail -n 5 $HOME/bertgpt_job/log.txt",
                     "describe", "delete", *one_slice,
                     "describe", "ssh 0: cat $HOME/bertgpt_job/exit_status 2>/dev/null || echo running",
                     "ssh 0: tail -n 5 $HOME/bertgpt_job/log.txt", "delete"]
    create = calls[0]
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "job1"]
    assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
            "--spot"} <= set(create)
    assert all("--zone=us-central2-b" in c for c in calls)
    # Installation and launch run on every worker at once; the flagfile is copied to every worker.
    assert install[0].startswith("ssh all:")
    assert "'bertgpt_jax[tpu] @ git+https://example.org/bertgpt_jax.git'" in install[0]
    scp = calls[2]
    assert scp[4:6] == [RECIPE, "job1:bertgpt_job/job.flags"] and "--worker=all" in scp
    assert launch[0].startswith("ssh all:") and "--flagfile=job.flags" in launch[0] and "nohup" in launch[0]
    assert "relaunch 1" in proc.stderr and "finished (exit status 0) after 1 relaunch" in proc.stderr


def test_a_failed_run_is_reported_and_its_slice_deleted(fake_gcloud):
    proc, calls = fake_gcloud("run_job.sh", f"--flagfile={RECIPE}", states=["READY"], statuses=["1"])
    assert proc.returncode == 1
    assert "failed with exit status 1" in proc.stderr
    assert _kind(calls[-1]) == "delete" and _kind(calls[-2]).startswith("ssh 0: tail -n 50")


def test_queued_resources_and_gs_paths(fake_gcloud):
    proc, calls = fake_gcloud("run_job.sh", "--provisioning=queued", "--accelerator_type=v5litepod-16",
                              "--flagfile=gs://bucket/job.flags",
                              "--package=gs://bucket/bertgpt_jax-0.1.0-py3-none-any.whl",
                              "--project=my-project", states=["READY"], statuses=["0"],
                              queued_states=["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])
    assert proc.returncode == 0, proc.stderr
    kinds = [_kind(c) for c in calls]
    # The queued resource is waited for until ACTIVE before anything runs on it.
    assert kinds[:4] == ["queued create", "queued describe", "queued describe", "queued describe"]
    assert kinds[-1] == "queued delete"
    assert {"--node-id=bertgpt-job", "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
            "--project=my-project"} <= set(calls[0])
    assert "--force" in calls[-1]
    assert "gcloud storage cp gs://bucket/bertgpt_jax-0.1.0-py3-none-any.whl" in kinds[4]
    assert "'$HOME/bertgpt_jax-0.1.0-py3-none-any.whl[tpu]'" in kinds[4]
    assert any("gcloud storage cp gs://bucket/job.flags $HOME/bertgpt_job/job.flags" in k for k in kinds)
    assert "scp" not in kinds


def test_dry_run_prints_every_command_and_runs_none(fake_gcloud):
    from bertgpt_jax import pretrain

    proc, calls = fake_gcloud("run_job.sh", "--dry_run", "--check_fit", "--accelerator_type=v4-32",
                              f"--flagfile={RECIPE}")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    printed = [line[2:] for line in proc.stderr.splitlines() if line.startswith("+ ")]
    words = [shlex.split(line) for line in printed]
    assert [w[0] for w in words] == ["python3"] + ["gcloud"] * (len(words) - 1)
    assert words[0][1:] == ["-m", "bertgpt_jax.pretrain", f"--flagfile={RECIPE}", "--compile_only",
                            "--topology=v4-32"]
    assert [w[4] for w in words[1:]] == ["create", "ssh", "scp", "ssh", "describe", "ssh", "ssh", "delete"]
    # Every pretrain flag the scripts pass (here and on the workers) is one the CLI defines (flagfile is absl's).
    for line in printed:
        for command in re.findall(r"bertgpt_jax\.pretrain ([^;'>]*)", line):
            for name in re.findall(r"--(\w+)", command):
                assert name == "flagfile" or name in pretrain.F, f"--{name} is not a pretrain flag"
    # And the local fit check parses as the CLI parses it.
    pretrain.F.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        pretrain.F(["pretrain", *words[0][3:]])
        assert pretrain.F.compile_only and pretrain.F.topology == "v4-32" and pretrain.F.model == "bert-base"
    finally:
        os.chdir(cwd)
        pretrain.F.unparse_flags()


@pytest.mark.parametrize("args, message", [
    (["--provisioning=reserved"], "must be on-demand, spot or queued"),
    (["--accelerator_type=v4"], "is not a slice name"),
    (["--flagfile=missing.flags"], "does not exist"),
    ([], "--flagfile is required"),
    (["--bogus"], "unknown option --bogus"),
])
def test_bad_options_exit_2_naming_them(fake_gcloud, args, message):
    proc, calls = fake_gcloud("run_job.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr and calls == []


# ---- multi-node GPU jobs under SLURM ----

SBATCH = os.path.join(ROOT, "experiments", "slurm", "pretrain_gpu.sbatch")

_INIT_FROM_SLURM = """
import json, jax
from bertgpt_jax.training import config
config.init_distributed(config.TrainConfig(output_dir="unused", model="bert-tiny", distributed=True))
print(json.dumps({"index": jax.process_index(), "count": jax.process_count(), "devices": jax.device_count()}))
jax.distributed.shutdown()
"""


def test_sbatch_script_parses_and_passes_pretrain_flags():
    from bertgpt_jax import pretrain

    proc = subprocess.run(["bash", "-n", SBATCH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = open(SBATCH).read()
    (srun,) = [line for line in text.splitlines() if line.startswith("srun ")]
    names = re.findall(r"--(\w+)", srun.split("bertgpt_jax.pretrain", 1)[1])
    assert "distributed" in names
    assert all(n == "flagfile" or n in pretrain.F for n in names), names
    assert re.search(r"^#SBATCH --ntasks-per-node=1$", text, re.MULTILINE)


def test_distributed_reads_the_environment_srun_sets():
    # Two processes on this machine, each with the variables srun gives a task of a 2-task step.
    job_id = str(4000 + os.getpid() % 4000)
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
               "SLURM_JOB_ID": job_id, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_NUM_NODES": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", _INIT_FROM_SLURM], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["index"] for r in results) == [0, 1]
    assert all(r["count"] == 2 and r["devices"] == 2 for r in results)
