"""Where and how a model runs: the device, the autocast precision, and the memory layout.

Each choice is made once, at run time, from what the machine has: CUDA, else Apple's MPS,
else the CPU; bf16 autocast where the hardware computes in bf16 (CUDA, CPUs with
AVX512-BF16 or AMX), fp16 on older GPUs, fp32 elsewhere; channels-last (NHWC) activations
for conv nets where the convolution libraries are fastest with them (oneDNN on the CPU,
cuDNN's tensor-core kernels under autocast). Nothing here hard-codes a device.

Example:
    >>> device = resolve_device("auto")
    >>> resolve_precision("auto", device)  # on an AVX512-BF16 CPU
    torch.bfloat16
    >>> use_channels_last(create_model("mnist_cnn"), device, torch.bfloat16)
    True
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from deepstart.errors import ConfigError

# torch.OutOfMemoryError is the device-neutral name (CUDA, MPS, XPU); older torch only had
# the CUDA one.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error (CUDA only:
    the CPU has no such cache)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# x86 feature flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles). AVX512
# without them (Skylake, Ice Lake) or AVX2 only emulates bf16, which is slower than fp32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_NATIVE_BF16: bool | None = None  # cpu_has_native_bf16's answer, asked once per process


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from ``/proc/cpuinfo`` text (read on Linux when not given);
    empty when unknown (other systems)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (``avx512_bf16`` or ``amx_bf16``) and torch
    has oneDNN to use it. Only then is bf16 autocast faster than fp32 on the CPU (measured:
    1.67x on an AVX512-BF16 AMD EPYC, docs/benchmarks.md); ARM and Apple CPUs answer False
    (not measured there)."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        mkldnn = torch.backends.mkldnn.is_available()
        _NATIVE_BF16 = mkldnn and any(f in cpu_flags() for f in BF16_CPU_FLAGS)
    return _NATIVE_BF16


def resolve_precision(
    precision: str, device: torch.device, task: str = "classification"
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    "auto" uses bf16 on CUDA GPUs that support it, else fp16 on CUDA; bf16 on CPUs with
    native bf16 (:func:`cpu_has_native_bf16`: faster there, bench/precision.py), fp32 on
    other CPUs and on MPS. Regression stays fp32 under "auto": bf16 keeps about 3 digits,
    and a function fit is judged on errors of 1e-3 and below. Name a precision to override.

    Example:
        >>> resolve_precision("auto", torch.device("cpu"))  # on an AVX512-BF16 CPU
        torch.bfloat16
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if task == "regression":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device that exists here ("auto": :func:`default_device`).

    A name torch does not know, or an accelerator this machine lacks, is a one-line
    ConfigError now rather than a traceback once the first tensor moves.
    """
    if device is None or str(device) == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use one of {DEVICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"--device {device}: this machine has {n} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available here; use cpu or auto")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: deepstart runs on {DEVICES}")
    return dev


def use_channels_last(
    model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None
) -> bool:
    """Whether batches for ``model`` on ``device`` should be channels-last (NHWC).

    True for models with 2-D convolutions on the CPU, where oneDNN's convolutions are 2-4x
    faster on NHWC input than on NCHW in training (fp32 and bf16 alike; bench/ablations.py,
    docs/benchmarks.md), and on CUDA under fp16/bf16 autocast, where cuDNN's tensor-core
    kernels want NHWC. False on MPS and for models without convolutions (MLPs, logistic
    regression), where the layout changes nothing. Only the input's layout is set: each
    convolution's output keeps its input's layout, and the weights stay as they are (so
    checkpoints and bundles hold ordinary contiguous tensors).

    Example:
        >>> use_channels_last(create_model("mlp"), torch.device("cpu"), None)
        False
    """
    if device.type == "cpu":
        wanted = True
    elif device.type == "cuda":
        wanted = amp_dtype is not None
    else:
        wanted = False
    return wanted and any(isinstance(m, nn.Conv2d) for m in model.modules())


def running_elsewhere(samples: int = 5, interval: float = 0.01) -> int | None:
    """How many threads other than this one are running or waiting for a CPU now (Linux,
    from ``/proc/loadavg``): the least of a few readings, so a blip does not count. None
    where that is not known. (The load average would also count the last minute's work,
    this program's own earlier runs included.)"""
    counts = []
    try:
        for i in range(samples):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])  # "runnable/total"
            counts.append(running - 1)  # less the thread reading it
            if i + 1 < samples:
                time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return None
    return max(min(counts), 0)


def busy_cpu_note(
    device: torch.device,
    *,
    others: int | None = None,
    cores: int | None = None,
    threads: int | None = None,
) -> str | None:
    """A tip when other programs keep the CPU busy, else None.

    PyTorch's OpenMP threads meet at a barrier after every parallel op; when another program
    holds one of the cores, the thread there is late to every barrier and the others wait
    for it. Fewer threads, one per free core, avoid that: beside a 2-thread training job on
    2 cores, ``shapes-fast`` took 11 s with one thread against 28 s with two, and
    EfficientNet's ~100 small ops per image ran 20-70x slower with two (docs/benchmarks.md).
    ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning) helps less (32 s there,
    and 0.8x for ``keras_cifar_cnn``) and costs 5-15% on a quiet machine. A different thread
    count rounds differently (a seed's results change in the last digits), and the load
    can change during a run, so the tip names the setting rather than changing it.
    ``others``/``cores``/``threads`` default to :func:`running_elsewhere`, the CPU count
    and torch's thread count.

    Example:
        >>> busy_cpu_note(torch.device("cpu"), others=1, cores=2, threads=2)
        'the CPU is busy (1 other thread running on 2 cores) ...'
    """
    if device.type != "cpu" or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    threads = torch.get_num_threads() if threads is None else threads
    cores = (os.cpu_count() or 1) if cores is None else cores
    if threads < 2:
        return None
    others = running_elsewhere() if others is None else others
    # Busy: more running work than the cores our threads leave free.
    if others is None or others < cores - threads + 1:
        return None
    what = "1 other thread" if others == 1 else f"{others} other threads"
    free = max(cores - others, 1)
    return (
        f"the CPU is busy ({what} running on {cores} cores): torch's {threads} threads share "
        f"cores with it and wait for each other at every step, so training is slower than "
        f"usual (2-3x, more for EfficientNet); starting with OMP_NUM_THREADS={free} set, "
        f"one thread per free core, is faster (docs/speed.md)"
    )


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) stored NHWC: channel stride 1, even for one channel.

    ``x.contiguous(memory_format=torch.channels_last)`` leaves a one-channel batch as it is
    (its strides are ambiguous), and a convolution then picks NCHW for the whole net, so
    grey models would miss the channels-last speed-up.

    Example:
        >>> to_channels_last(torch.zeros(2, 1, 28, 28)).stride()
        (784, 1, 28, 1)
    """
    if x.dim() != 4 or (x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    n, c, h, w = x.shape
    # (.permute(0, 2, 3, 1).contiguous() would keep a one-channel batch's strides too.)
    nhwc = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    return nhwc.copy_(x)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run repeats bit for bit (fastai's ``set_seed``,
    Keras's ``set_random_seed``): call it before the model is made. torch 2.13 seeds its global
    generator differently in every process, so without it a model's initial weights and its
    dropout masks differ from run to run; ``Learner(seed=...)`` seeds only the shuffles and
    augmentations, and ``deepstart train`` calls this with ``--seed``."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
