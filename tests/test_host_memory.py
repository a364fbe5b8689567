import os
import subprocess
import sys

from bertgpt_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tunable_is_added_to_the_ones_already_set_and_stops_the_reexec():
    env = host_memory.with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "1"}
    assert host_memory.with_huge_pages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert not host_memory.wanted(env)  # already set: the re-executed process does not re-execute again
    assert not host_memory.wanted({host_memory.OPT_OUT: "1"})


def _run(code: str, env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-O", "-c", code, "arg1", "--flag=2"], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True, timeout=60)
    return out.stdout.split("\n")


def test_reexec_keeps_pid_arguments_and_interpreter_options():
    code = ("import os, sys; print('start', os.getpid(), flush=True); "
            "from bertgpt_jax import host_memory; host_memory.reexec_with_huge_pages(); "
            "print(os.getpid(), sys.argv[1:], sys.flags.optimize, os.environ.get('GLIBC_TUNABLES'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    wanted = host_memory.wanted(env)
    lines = _run(code, env)
    starts = [line.split()[1] for line in lines if line.startswith("start")]
    pid, rest = lines[len(starts)].split(" ", 1)
    assert len(starts) == (2 if wanted else 1) and set(starts) == {pid}  # once more at most, same process
    tunables = host_memory.TUNABLE if wanted else None
    assert rest == f"['arg1', '--flag=2'] 1 {tunables}"
    # Opted out: no re-exec, environment untouched.
    lines = _run(code, {**env, host_memory.OPT_OUT: "1"})
    assert len([line for line in lines if line.startswith("start")]) == 1
    assert lines[1].endswith("None")


def test_only_cpu_runs_restart_with_the_tunable(monkeypatch):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT, "JAX_PLATFORMS")}
    # A TPU VM: libtpu installed and the chips' device nodes present.
    monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: ["libtpu"])
    monkeypatch.setattr(host_memory, "accelerator_devices", lambda: ["/dev/accel0", "/dev/accel1"])
    assert not host_memory.runs_on_cpu(base) and not host_memory.wanted(base)
    assert host_memory.runs_on_cpu({**base, "JAX_PLATFORMS": "cpu"})  # the user asked for the CPU
    assert not host_memory.runs_on_cpu({**base, "JAX_PLATFORMS": "tpu,cpu"})
    # libtpu installed for ahead-of-time compilation on a host without TPUs: the run computes on the CPU.
    monkeypatch.setattr(host_memory, "accelerator_devices", lambda: [])
    assert host_memory.runs_on_cpu(base)
    # No plugin at all.
    monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: [])
    monkeypatch.setattr(host_memory, "accelerator_devices", lambda: ["/dev/nvidia0"])
    assert host_memory.runs_on_cpu(base)
