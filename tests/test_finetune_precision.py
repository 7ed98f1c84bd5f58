"""CPU training precision follows the hardware, not the preset: bf16 only where it is native."""

from __future__ import annotations

import pytest

from mitoprobe.finetune.precision import FORCE_ENV, cpu_has_native_bf16, training_precision


@pytest.mark.parametrize("forced, allow, want", [("0", True, "fp32"), ("1", True, "bf16"), ("1", False, "fp32"),
                                                 ("0", False, "fp32")])
def test_cpu_precision_needs_native_bf16_and_permission(monkeypatch, forced, allow, want):
    monkeypatch.setenv(FORCE_ENV, forced)
    assert cpu_has_native_bf16() is (forced == "1")
    assert training_precision("cpu", allow) == want
    assert training_precision("cuda:0", allow) == "bf16"  # GPUs always train under bf16 autocast


def test_detection_matches_torch_without_override(monkeypatch):
    import torch

    monkeypatch.delenv(FORCE_ENV, raising=False)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() is bool(native)
    assert training_precision("cpu", True) == ("bf16" if native else "fp32")
