"""Our own heads follow the scikit-learn estimator contract (parametrize_with_checks)."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.heads import BalancedMLP, CosineKNN, LGBMHead, ReducePCA, SimpleShot, TorchLinearProbe

# Checks that cannot hold for binary-only heads or that need more data/iterations than a fast
# test allows; each reason is specific.
EXPECTED = {
    "check_classifiers_one_label_sample_weights": "no sample_weight in fit",
    "check_sample_weight_equivalence_on_dense_data": "no sample_weight in fit",
    "check_sample_weight_equivalence_on_sparse_data": "no sample_weight in fit",
}


def _expected(est):
    out = dict(EXPECTED)
    if isinstance(est, (TorchLinearProbe, BalancedMLP, LGBMHead)):
        out["check_classifiers_train"] = "tiny stochastic fits in the check are not accurate enough"
        out["check_classifiers_classes"] = "tiny stochastic fits in the check are not accurate enough"
    return out


@parametrize_with_checks(
    [SimpleShot(), CosineKNN(n_neighbors=3), LGBMHead(n_estimators=10), BalancedMLP(max_iter=30),
     TorchLinearProbe(max_epochs=3, lr=1e-2), ReducePCA(n_components=2)],
    expected_failed_checks=_expected)
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_import_leaves_torch_out():
    import subprocess
    import sys

    code = "import sys, store, classifiers, classifiers.heads, classifiers.runner, classifiers.cli; " \
           "print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("name", ["logreg", "lgbm", "knn", "simpleshot", "mlp", "torch_linear"])
def test_make_head_clones(name):
    from sklearn.base import clone

    from classifiers.heads import make_head

    est = make_head(name)
    assert clone(est).get_params().keys() == est.get_params().keys()
