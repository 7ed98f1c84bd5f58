"""The dtype training actually runs at on this machine: bf16 only where the hardware has it natively.

On GPU, bf16 autocast. On CPU, bf16 only where the CPU has native bf16 (AVX512-BF16 or AMX tiles):
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


def training_precision(device: str, allow_cpu_bf16: bool) -> str:
    """``"bf16"`` or ``"fp32"``: what autocast runs at for this device and config."""
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if allow_cpu_bf16 and cpu_has_native_bf16() else "fp32"
