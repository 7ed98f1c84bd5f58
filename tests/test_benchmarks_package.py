"""benchmarks/ as a package: every script imports without running, the machine line, the documented commands.

Why: the scripts run as ``python -m benchmarks.<name>`` (no ``sys.path`` edits), print one machine line
(``benchmarks.machine``) beside their figures, and the docs quote them by those commands: a renamed script,
a script that runs on import or a command left in the old ``python benchmarks/x.py`` form is caught here.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import benchmarks
from benchmarks import machine

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_script_imports_as_a_package_module_without_running(capsys):
    for name in SCRIPTS:
        importlib.import_module(f"benchmarks.{name}")
    assert capsys.readouterr().out == ""  # nothing ran: each script's work sits under `if __name__ == "__main__"`
    for name in SCRIPTS:
        assert "sys.path.insert" not in (REPO / "benchmarks" / f"{name}.py").read_text(), name


def test_the_machine_module_imports_no_torch():
    code = "import sys, benchmarks.machine; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_facts_are_json_and_the_header_states_them():
    f = machine.facts()
    json.dumps(f)
    assert f["cores"] >= 1 and len(f["load"]) == 3 and f["cpu_capability"]
    line = machine.header(f)
    for part in (f"{f['cores']} cores", f"torch {f['torch']}", f"CPU capability {f['cpu_capability']}",
                 f"{f['torch_threads']} thread", "load average " + "/".join(f"{x:.2f}" for x in f["load"])):
        assert part in line, part


def test_header_says_what_the_cpu_lacks_and_names_the_gpu():
    f = dict(cpu_model="Test CPU", cores=8, cores_usable=4, mem_total_gib=31.2, cpu_flags=["avx2", "fma"],
             native_bf16=False, load=[1.0, 0.5, 0.25], torch="2.0", cpu_capability="AVX2", torch_threads=4,
             gpu="NVIDIA H100", gpu_count=1, gpu_memory_gib=79.2, cuda="12.8", driver="550.1",
             env={"MITOPROBE_CPU_BF16": "0"})
    line = machine.header(f)
    assert line.startswith("machine: Test CPU, 8 cores (4 usable), 31.2 GiB; torch 2.0, CPU capability AVX2")
    assert "flags avx2 fma, no AVX-512, no AMX; native bf16 no; load average 1.00/0.50/0.25" in line
    assert "GPU NVIDIA H100, 79.2 GiB, CUDA 12.8, driver 550.1" in line and line.endswith("MITOPROBE_CPU_BF16=0")
    amx = machine.header(dict(f, cpu_flags=["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"], native_bf16=True,
                              gpu=None, env={}))
    assert "no AVX-512" not in amx and "no AMX" not in amx and "native bf16 yes" in amx and "GPU" not in amx


def test_the_docs_run_benchmarks_as_modules_that_exist():
    for doc in DOCS:
        text = doc.read_text()
        assert not re.search(r"python3? benchmarks/", text), f"{doc.name}: use `python -m benchmarks.<name>`"
        for name in re.findall(r"-m benchmarks\.(\w+)", text):
            assert name in SCRIPTS, f"{doc.name} runs benchmarks.{name}, which does not exist"
