"""The machine a figure was measured on: one source of facts and one header line for every benchmark.

Why: a CPU figure means little without the CPU's vector units (torch's capability, AVX-512 / AMX /
native bf16), its cores, its load and torch's threads; a GPU figure without the card, its memory, the
CUDA and driver versions (docs/benchmarks.md, "The machines"). Every script prints ``header()`` beside
its figures and stores ``facts()`` in its JSON, so no figure loses its machine. torch is imported only
when ``facts()`` runs, never at import: torch-free scripts import this module too.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

# CPU flags (as /proc/cpuinfo spells them) that decide which kernels run: stated when present.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Environment variables that change what the CPU figures measure (forced precision, emulated ISA, threads).
ENV = ("MITOPROBE_CPU_BF16", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def _cpuinfo() -> tuple[str | None, set[str] | None]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; (None, None) off Linux."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and flags is None:
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _driver() -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``; torch does not report it), else None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _torch_facts() -> dict:
    """torch's version, CPU capability and threads; the first GPU's name, memory, CUDA and driver if any."""
    try:
        import torch  # lazy: torch-free scripts import this module too
    except ImportError as e:
        return dict(torch=None, cpu_capability=f"unknown ({e})", torch_threads=None, gpu=None)
    out = dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
               torch_threads=torch.get_num_threads(), gpu=None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda, driver=_driver())
    return out


def facts() -> dict:
    """Everything ``header()`` states, as JSON-ready values (stored beside a benchmark's figures)."""
    model, flags = _cpuinfo()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = dict(cpu_model=model or platform.processor() or None, cores=os.cpu_count(), cores_usable=affinity,
               mem_total_gib=_memory_gib(), cpu_flags=None if flags is None else [f for f in FLAGS if f in flags],
               native_bf16=None if flags is None else bool({"avx512_bf16", "amx_bf16"} & flags),
               load=[round(x, 2) for x in os.getloadavg()], python=platform.python_version(),
               platform=platform.platform(), node=platform.node())
    out.update(_torch_facts())
    out["env"] = {k: os.environ[k] for k in ENV if k in os.environ}
    return out


def load_average() -> str:
    """The 1, 5 and 15 min load averages now, as ``0.98/0.63/0.28`` (for a figure's end line)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _flags_text(f: dict) -> str:
    flags = f.get("cpu_flags")
    if flags is None:
        return "CPU flags unknown"
    missing = [name for name, prefix in (("AVX-512", "avx512"), ("AMX", "amx"))
               if not any(x.startswith(prefix) for x in flags)]
    bf16 = "yes" if f.get("native_bf16") else "no"
    return f"flags {' '.join(flags) or '-'}" + "".join(f", no {m}" for m in missing) + f"; native bf16 {bf16}"


def header(f: dict | None = None) -> str:
    """One line: CPU model, cores (usable), memory, torch and its CPU capability and threads, the flags,
    the load average when ``f`` was taken (now by default), the GPU, and any variable of ``ENV`` set."""
    f = facts() if f is None else f
    usable = f.get("cores_usable")
    cores = f"{f.get('cores')} cores" + (f" ({usable} usable)" if usable not in (None, f.get("cores")) else "")
    mem = f", {f['mem_total_gib']:g} GiB" if f.get("mem_total_gib") else ""
    load = "/".join(f"{x:.2f}" for x in f["load"]) if f.get("load") else "?"
    threads = f.get("torch_threads")
    line = (f"machine: {f.get('cpu_model') or 'CPU ?'}, {cores}{mem}; torch {f.get('torch') or '-'}, CPU capability "
            f"{f.get('cpu_capability')}, {threads} thread{'' if threads == 1 else 's'}; {_flags_text(f)}; "
            f"load average {load}")
    if f.get("gpu"):
        line += (f"; GPU {f['gpu']}" + (f" x{f['gpu_count']}" if f.get("gpu_count", 1) > 1 else "")
                 + f", {f.get('gpu_memory_gib')} GiB, CUDA {f.get('cuda')}, driver {f.get('driver') or '?'}")
    if f.get("env"):
        line += "; " + " ".join(f"{k}={v}" for k, v in f["env"].items())
    return line


if __name__ == "__main__":
    print(header())
