"""Transparent huge pages for XLA's host buffers (Linux with glibc >= 2.35).

XLA's CPU runtime allocates each execution's buffers afresh. Allocations above glibc's mmap threshold (32 MB at
most) are new mappings every time, which the kernel faults in and zeroes 4 KB at a time: a train step spends
much of its system time in page faults. glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for
transparent huge pages (2 MB) on its mappings, which cuts the faults by two orders of magnitude (figures in
bench/README.md). Tunables are read only when a process starts, so the CLI re-executes itself once with
the tunable set (``reexec_with_huge_pages``). ``BERTGPT_JAX_NO_HUGE_PAGES=1`` turns this off.

This was measured for XLA's CPU runtime only, so it applies only where the run computes on the CPU:
``JAX_PLATFORMS=cpu``, or no accelerator (no TPU/GPU plugin for jax installed, or one installed but no
accelerator device on the host). A TPU VM or a GPU host never restarts.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "BERTGPT_JAX_NO_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
# jax's accelerator plugins (TPU: libtpu; GPU: the CUDA and ROCm plugins) and the device nodes their hardware shows.
_PLUGIN_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                   "jax_plugins")
_DEVICE_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def accelerator_plugins() -> list[str]:
    """The accelerator plugins for jax installed here."""
    return [m for m in _PLUGIN_MODULES if importlib.util.find_spec(m) is not None]


def accelerator_devices() -> list[str]:
    """TPU and GPU device nodes present on this host."""
    return sorted(p for pattern in _DEVICE_NODES for p in glob.glob(pattern))


def runs_on_cpu(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether jax will compute on the CPU here: ``JAX_PLATFORMS`` says so, or no accelerator is usable."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "") or env.get("JAX_PLATFORM_NAME", "")
    if platforms:
        return [p.strip() for p in platforms.split(",") if p.strip()] == ["cpu"]
    return not (accelerator_plugins() and accelerator_devices())


def wanted(env: Optional[Mapping[str, str]] = None) -> bool:
    """True when setting the tunable would change anything: a CPU run (:func:`runs_on_cpu`) on Linux with
    glibc >= 2.35 and THP in ``madvise`` mode (with ``always`` every mapping already gets huge pages, with
    ``never`` none can), and not set or opted out."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or env.get(OPT_OUT, "") not in ("", "0"):
        return False
    if not runs_on_cpu(env):
        return False
    if "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
        return False
    lib, version = platform.libc_ver()
    try:
        if lib != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
            return False
        with open(_THP_MODE) as f:
            return "[madvise]" in f.read()
    except (OSError, ValueError):
        return False


def with_huge_pages(env: Optional[Mapping[str, str]] = None) -> dict:
    """A copy of ``env`` (default: this process's) with the tunable added to any GLIBC_TUNABLES already set."""
    env = dict(os.environ if env is None else env)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
    return env


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command line with the tunable set; returns at once when not ``wanted``.

    Call it first thing in a program's entry point: the new process starts from the beginning (same PID, open
    files and arguments, including the interpreter's own options and ``-m``).
    """
    if wanted():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, with_huge_pages())
