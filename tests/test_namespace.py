"""One namespace: every layer is ``mitoprobe.<layer>``, so a user's working folder that holds ``store/``,
``dashboard/`` or ``classifiers/`` folders (a store folder named ``store``, their own packages) shadows
nothing, for the API, the ``mitoprobe`` command and ``python -m mitoprobe`` alike."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from mitoprobe.store.example_benchmark import write_example_benchmark

SHADOWS = ("store", "dashboard", "classifiers", "embedder", "finetune")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_folders_named_like_our_layers_shadow_nothing(tmp_path):
    for name in SHADOWS:  # importable packages that would win over top-level ones of ours
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('a user package, not mitoprobe')\n")
    bench = write_example_benchmark(tmp_path / "bench", n_per_class=3)
    shutil.rmtree(tmp_path / "store")
    cli = str(Path(sys.executable).with_name("mitoprobe"))
    _run([cli, "data", "import", str(bench), "--store", "store"], tmp_path)  # the store folder is named `store`
    api = _run([sys.executable, "-c", "import mitoprobe; ws = mitoprobe.open('store', read_only=True); "
                "print(len(ws.patches()), type(ws.store).__module__)"], tmp_path)
    assert api.stdout.split() == [str(len(list(bench.rglob("*.png")))), "mitoprobe.store.store"]
    info = _run([sys.executable, "-m", "mitoprobe", "store", "info", "--store", "store"], tmp_path)
    assert "store:" in info.stdout
    layers = _run([sys.executable, "-c", "import mitoprobe.dashboard, mitoprobe.classifiers, mitoprobe.embedder, "
                   "mitoprobe.finetune, mitoprobe.store as s; print(s.__file__)"], tmp_path)
    assert str(tmp_path) not in layers.stdout


# an import statement at a line's start, or in a code string (after a quote, a ``;`` or an escaped newline)
OLD_IMPORT = re.compile(r"(?:^\s*|[;\"'`]\s*|\\n)(?:import (?:sys, )?|from )(?:store|embedder|classifiers|finetune|dashboard)\b")


def test_no_code_imports_a_layer_by_its_old_top_level_name():
    """From the repository root the folders still import as top-level packages (a second copy of each
    module): every import, in code and in the code strings tests run in fresh processes, says mitoprobe."""
    repo = Path(__file__).resolve().parents[1]
    files = [p for d in ("mitoprobe", "store", "embedder", "classifiers", "finetune", "dashboard", "benchmarks", "tests")
             for p in (repo / d).rglob("*.py")]
    offenders = [f"{p.relative_to(repo)}:{i}: {line.strip()}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if OLD_IMPORT.search(line)]
    assert not offenders, "\n".join(offenders)
