"""bench.json's `device` and `machine` blocks: what the figures were measured on.

A figure means little without its machine: the CPU's vector and matrix extensions decide
whether bf16 pays, the cores the process may use decide the workers, and the thread settings
and library versions decide which kernels run.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import cv2
import numpy as np
import PIL
import timm
import torch
import torchvision

from geoguess.bench.timing import cores

# CPU flags that decide which kernels torch, OpenCV and OpenBLAS pick (every `amx_*` flag too).
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Environment variables that set the thread counts and kernels of the numeric libraries.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
LIBRARIES = {
    "torch": torch,
    "torchvision": torchvision,
    "timm": timm,
    "numpy": np,
    "opencv": cv2,
    "pillow": PIL,
}


def describe_device(device: torch.device) -> dict:
    """The `device` block: device type, CPU model, usable cores, torch, GPU name."""
    info = {
        "type": device.type,
        "cpu": cpu_model(),
        "cores": cores(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine() -> dict:
    """The `machine` block: CPU model and flags, cores and affinity, memory, library versions,
    thread counts and the environment that sets them, the CUDA device if there is one."""
    flags = cpu_flags()
    relevant = sorted(set(CPU_FLAGS) | {f for f in flags if f.startswith("amx_")})
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = list(range(os.cpu_count() or 1))
    return {
        "cpu": cpu_model(),
        "cpu_flags": {flag: flag in flags for flag in relevant},
        "logical_cores": os.cpu_count(),
        "affinity": affinity,
        "affinity_cores": len(affinity),
        "memory_total_mb": meminfo_kb("MemTotal") / 1024,
        "python": platform.python_version(),
        "versions": {name: module.__version__ for name, module in LIBRARIES.items()},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV},
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo's `flags`; empty where there is none)."""
    return set((_cpuinfo_field("flags") or "").split())


def meminfo_kb(field: str) -> int:
    """A `kB` field of /proc/meminfo (0 where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpuinfo_field(name: str) -> str | None:
    """The first `name` line of /proc/cpuinfo (every core repeats it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    return None
