"""This machine, as the benchmarks, the trainer's precision choice and the latency records name it: the CPU's model
and feature flags (native bf16 or not), and the cores this process may use. The one place /proc/cpuinfo is read."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 instructions that compute bf16 dot products


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows).

    torch exposes no public check for bf16 instructions: ``torch.backends.cpu.get_cpu_capability()`` stops at
    "AVX512", which older CPUs without bf16 report too (oneDNN emulates bf16 there, which need not pay off).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 convolutions natively, so that bf16 autocast pays off: CUDA GPUs from
    Ampere on, and CPUs with AVX512-BF16 or AMX-BF16. Elsewhere ``precision: bf16`` still forces it."""
    if device_type == "cuda":
        import torch  # here, not at the top: the CLI names the machine before it needs torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device_type == "cpu" and bool(cpu_flags() & BF16_CPU_FLAGS)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_name() -> str:
    """The CPU's model and its core count, as latency records name the hardware they were measured on."""
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers, Kubernetes
    limits), which ``os.cpu_count`` and the affinity mask do not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
