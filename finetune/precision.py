"""The dtype training and evaluation actually run at on this machine.

On GPU, the config's autocast dtype (``FinetuneConfig.precision``/``eval_precision``; the paper's scripts
train in fp32 and evaluate H-optimus under fp16 autocast; "auto" is bf16, the behaviour before the
per-model table). On CPU, bf16 only where the CPU has native bf16 (AVX512-BF16 or AMX tiles):
on an AVX2-only CPU bf16 is emulated and about ten times slower than fp32 (8.5 against 66-87 img/s
for the offline preset's CNN; ``benchmarks/cpu_precision.py`` measures it on any machine). So a
config only *allows* bf16 on CPU (``FinetuneConfig.cpu_bf16``); this module decides whether it is
*used*, and each fold's DONE record (hence its ``runs`` rows) says which it was.
``$MITOPROBE_CPU_BF16=1``/``0`` forces the choice (to compare both on one machine).
"""

from __future__ import annotations

import os
from functools import lru_cache

FORCE_ENV = "MITOPROBE_CPU_BF16"


def cpu_capability() -> str:
    """torch's name for the CPU's vector units (``AVX2``, ``AVX512``, ...): stated beside CPU figures."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


@lru_cache(maxsize=1)
def _native_bf16() -> bool:
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes)
    except AttributeError:  # an older torch: read the kernel's CPU flags instead
        try:
            with open("/proc/cpuinfo") as fh:
                flags = fh.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run in hardware (AVX512-BF16 or AMX); ``$MITOPROBE_CPU_BF16`` overrides."""
    forced = os.environ.get(FORCE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _native_bf16()


def training_precision(device: str, allow_cpu_bf16: bool, precision: str = "auto") -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what training autocast runs at for this device and config."""
    if device.startswith("cuda"):
        return "bf16" if precision == "auto" else precision
    return "bf16" if allow_cpu_bf16 and precision in ("auto", "bf16") and cpu_has_native_bf16() else "fp32"


def evaluation_precision(device: str, train: str, precision: str = "auto") -> str:
    """Evaluation's autocast dtype: the training one ("auto"), else the config's on CUDA; on CPU fp16 is
    not used (the H-optimus notebooks' ``autocast(device_type="cuda")`` does nothing there either)."""
    if precision == "auto":
        return train
    if device.startswith("cuda"):
        return precision
    return train if precision == "bf16" else "fp32"


def autocast(device: str, precision: str):
    """The autocast context for a resolved precision (``"fp32"`` disables it)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)
