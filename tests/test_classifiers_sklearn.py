"""Our own heads follow the scikit-learn estimator contract (parametrize_with_checks)."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from mitoprobe.classifiers.heads import HEADS, BalancedMLP, CosineKNN, LGBMHead, ReducePCA, SimpleShot, TorchLinearProbe


@parametrize_with_checks(
    [SimpleShot(), CosineKNN(n_neighbors=3), LGBMHead(n_estimators=10), BalancedMLP(max_iter=30),
     TorchLinearProbe(max_epochs=3, lr=1e-2), ReducePCA(n_components=2)])
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_import_leaves_torch_out():
    import subprocess
    import sys

    code = "import sys, mitoprobe.store, mitoprobe.classifiers, mitoprobe.classifiers.heads, " \
           "mitoprobe.classifiers.runner, mitoprobe.classifiers.scoring; " \
           "print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("name", sorted(HEADS))
def test_make_head_clones(name):
    from sklearn.base import clone

    from mitoprobe.classifiers.heads import make_head

    est = make_head(name)
    assert clone(est).get_params().keys() == est.get_params().keys()
