"""Your own head, from a file or a module, under the protocol: checked before any write, identified by its
source (an edited file is a new family), usable by report, compare and predict, refused by predict once edited."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import make_six_slide_store
from click.testing import CliRunner

from mitoprobe.embedder import embed
from mitoprobe.classifiers.own_heads import estimator_head, own_head
from mitoprobe.classifiers.predict import predict_dataset
from mitoprobe.classifiers.report import leaderboard
from mitoprobe.classifiers.runner import sweep
from mitoprobe.classifiers.significance import compare, resolve_families
from mitoprobe.cli import cli
from mitoprobe.store.errors import ProtocolError

SVM_HEAD = '''
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC


def make_svm(C=1.0, random_state=0):
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(C=C, random_state=random_state), cv=3))


make_svm.grid = {"C": [0.1, 1.0]}
'''


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The six-slide benchmark store (real PNGs) with handcrafted vectors."""
    st = make_six_slide_store(tmp_path_factory.mktemp("own-heads"))
    embed(st, "handcrafted", progress=False)
    return st


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("heads") / "my_heads.py"
    p.write_text(SVM_HEAD)
    return p


def _parts(store):
    return sorted(p.name for t in ("runs", "predictions") for p in store.results.parts(t))


def test_a_head_from_a_file_runs_like_a_builtin_and_records_its_source(synth, head_file):
    spec = own_head(f"{head_file}:make_svm")
    assert spec.name == "make_svm" and spec.grid == ({"C": 0.1}, {"C": 1.0})
    rows = sweep(synth, "handcrafted", heads=[spec, "logreg"], n_boot=50, show_progress=False)
    mine = rows[rows["head"] == "make_svm"]
    assert len(mine) and mine["fold"].nunique() == 6  # 5 folds + the fold ensemble
    cfg = json.loads(mine["config_json"].iloc[0])
    assert cfg["head_source"]["kind"] == "file" and len(cfg["head_source"]["sha256"]) == 64
    assert cfg["head_where"] == str(head_file.resolve()) and {t["params"]["C"] for t in cfg["tried"]} == {0.1, 1.0}
    board = leaderboard(synth, model="handcrafted", with_paper=False)
    assert "make_svm" in set(board["head"])
    fams = resolve_families(synth.results.read("runs"), ["handcrafted:make_svm", "handcrafted:logreg"])
    assert len(compare(synth, fams)) > 0
    from mitoprobe.classifiers.fusion import fuse

    fused = fuse(synth, ["handcrafted:make_svm", "handcrafted:logreg"], rule="mean", n_boot=50, name="svm+lr")
    assert fused is not None and len(fused) > 0
    out = predict_dataset(synth, "handcrafted", "make_svm", "AtNorM-MD")
    n_md = (synth.patches(columns=["dataset"])["dataset"] == "AtNorM-MD").sum()
    assert out["p_atypical"].between(0, 1).all() and len(out) == n_md > 0


def test_an_edited_head_file_is_a_new_family_and_predict_refuses_the_old_one(synth, tmp_path):
    p = tmp_path / "edited.py"
    p.write_text(SVM_HEAD + "# a lab's copy\n")  # the same code in another place would be the same family
    first = sweep(synth, "handcrafted", heads=[own_head(f"{p}:make_svm")], n_boot=50, show_progress=False)
    fam = first["family_id"].iloc[0]
    p.write_text(SVM_HEAD.replace('"C": [0.1, 1.0]', '"C": [0.5]') + "# a lab's copy\n")
    second = sweep(synth, "handcrafted", heads=[own_head(f"{p}:make_svm")], n_boot=50, show_progress=False)
    assert len(second) and second["family_id"].iloc[0] != fam
    with pytest.raises(ProtocolError, match="changed since the run"):
        predict_dataset(synth, "handcrafted", "make_svm", "AtNorM-MD", family_id=fam)


def test_a_head_from_a_module_and_an_estimator_object(synth, tmp_path, monkeypatch):
    pkg = tmp_path / "labheads"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "probes.py").write_text(textwrap.dedent('''
        from sklearn.linear_model import LogisticRegression

        def make_lr(C=1.0):
            return LogisticRegression(C=C, max_iter=200)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = own_head("labheads.probes:make_lr")
    assert spec.source.kind == "module" and spec.source.name == "labheads.probes:make_lr"
    rows = sweep(synth, "handcrafted", heads=[spec], n_boot=50, show_progress=False)
    assert set(rows["head"]) == {"make_lr"}
    from sklearn.neighbors import KNeighborsClassifier

    est = estimator_head(KNeighborsClassifier(n_neighbors=7), name="knn7")
    rows = sweep(synth, "handcrafted", heads=[est], n_boot=50, show_progress=False)
    assert set(rows["head"]) == {"knn7"}
    assert json.loads(rows["config_json"].iloc[0])["head_source"]["name"].endswith("KNeighborsClassifier")


@pytest.mark.parametrize("body,match", [
    ("def make(C=1.0):\n    from sklearn.svm import LinearSVC\n    return LinearSVC(C=C)\n", "no predict_proba"),
    ("def make():\n    raise RuntimeError('boom')\n", "factory failed"),
    ("make = 3\n", "no callable"),
    ("import not_a_module_anywhere\n", "importing"),
    ("def make():\n    from sklearn.dummy import DummyRegressor\n    return DummyRegressor()\n", "predict_proba"),
])
def test_bad_factories_get_one_line_and_nothing_is_written(synth, tmp_path, body, match):
    p = tmp_path / "bad.py"
    p.write_text(body)
    before = _parts(synth)
    with pytest.raises(ProtocolError, match=match) as err:
        sweep(synth, "handcrafted", heads=[f"{p}:make"], n_boot=50, show_progress=False)
    assert "\n" not in str(err.value)
    assert _parts(synth) == before


def test_cli_own_head_with_grid_and_param(synth, head_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["probe", "--store", str(synth.root), "--model", "handcrafted", "--head",
                              f"{head_file}:make_svm", "--grid", "C=0.3,3", "--param", "make_svm.random_state=1"])
    assert res.exit_code == 0, res.output
    runs = synth.results.read("runs")
    fold0 = runs[(runs["head"] == "make_svm") & (runs["fold"] == 0)].sort_values("created_at")
    cfg = json.loads(fold0["config_json"].iloc[-1])
    assert {t["params"]["C"] for t in cfg["tried"]} == {0.3, 3} and cfg["params"] == {"random_state": 1}
    res = runner.invoke(cli, ["probe", "--store", str(synth.root), "--model", "handcrafted", "--head", "logreg",
                              "--grid", "C=1"])
    assert res.exit_code != 0 and "own head" in res.output + str(res.exception)
    res = runner.invoke(cli, ["probe", "--store", str(synth.root), "--model", "handcrafted", "--head",
                              f"{tmp_path / 'missing.py'}:make"])
    assert res.exit_code != 0 and "no file" in res.output + str(res.exception)
