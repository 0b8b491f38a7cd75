"""The shortlist GEMMs (derainkit.knn.backends): the private oneDNN op and the public-op fallback agree
within the engine's stated error bound, and the kNN results are identical whichever one runs."""
from __future__ import annotations

import pytest
import torch

from derainkit.knn import Window, knn
from derainkit.knn import backends
from derainkit.knn.select import GemmErrorBound

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_onednn = pytest.mark.skipif(not backends.onednn_linear_ok(),
                                  reason="oneDNN fused linear not available or not fp32-exact here")


@pytest.fixture
def reprobe():
    """Clear the probe's cache before and after, so an environment change in the test does not leak."""
    backends.onednn_linear_ok.cache_clear()
    yield
    backends.onednn_linear_ok.cache_clear()


def _bound(q, x):
    """2·tol: each GEMM is within tol of δ − ‖q‖², so two GEMMs are within 2·tol of each other."""
    qn, xn = (q * q).sum(-1), (x * x).sum(-1)
    return 2 * GemmErrorBound.for_gemm(q.shape[-1], 2.0 ** -24, torch.float32).tol(qn, xn.max())


@needs_onednn
def test_onednn_and_public_linear_agree():
    g = torch.Generator().manual_seed(0)
    a, w, bias = torch.randn(70, 288, generator=g), torch.randn(90, 288, generator=g), torch.randn(90, generator=g)
    y = backends.linear_onednn(a, w, bias)
    ref = torch.nn.functional.linear(a, w, bias)
    exact = a.double() @ w.double().t() + bias.double()
    bound = 291 * 2.0 ** -24 * (a.abs().double() @ w.abs().double().t() + bias.abs().double())
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert ((y.double() - exact).abs() <= bound).all() and ((ref.double() - exact).abs() <= bound).all()


@needs_onednn
@pytest.mark.parametrize("offset", [0.0, 50.0])  # 50: norms far above the distances, where the GEMM form is worst
def test_gemm_forms_agree_within_the_error_bound(offset):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(40, 27, generator=g) + offset
    x = torch.randn(300, 27, generator=g) + offset
    xn = (x * x).sum(-1)
    dnn = backends.gemm_form_rows(q, x, xn, onednn=True, max_rows=40)(0, 40).clone()
    pub = backends.gemm_form_rows(q, x, xn, onednn=False, max_rows=40)(0, 40).clone()
    assert ((dnn - pub).abs() <= _bound(q, x)[:, None]).all()
    qb, xb = q.view(4, 10, 27), x[:200].reshape(4, 50, 27)
    xnb = (xb * xb).sum(-1)
    dnn_b = backends.gemm_form_batched(qb, xb, xnb, onednn=True)
    pub_b = backends.gemm_form_batched(qb, xb, xnb, onednn=False)
    assert ((dnn_b - pub_b).abs() <= _bound(q, x).view(4, 10, 1)).all()


@pytest.mark.parametrize("quantised", [False, True])  # quantised inputs: exact ties, fallbacks on every path
def test_knn_identical_with_and_without_onednn(monkeypatch, quantised):
    g = torch.Generator().manual_seed(2)
    if quantised:
        q, x = torch.randint(0, 3, (2, 24 * 20, 12), generator=g).float(), torch.randint(0, 3, (2, 12 * 10, 12),
                                                                                          generator=g).float()
    else:
        q, x = torch.randn(2, 24 * 20, 12, generator=g), torch.randn(2, 12 * 10, 12, generator=g)
    kw = dict(query_grid=(24, 20), cand_grid=(12, 10))
    runs = []
    for probe in (backends.onednn_linear_ok, lambda: False):
        monkeypatch.setattr(backends, "onednn_linear_ok", probe)
        runs.append([knn(q, x, 5, window=Window(6, "msgnn", 2), **kw), knn(q, x, 5),
                     knn(q, x, 5, memory_budget=100)])
    for a, b in zip(*runs):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_use_onednn_only_for_cpu_fp32_full_precision():
    t32, t64 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)
    assert backends.use_onednn(t32, 2.0 ** -24) == backends.onednn_linear_ok()
    assert not backends.use_onednn(t64, 2.0 ** -53)
    assert not backends.use_onednn(t32, 2.0 ** -11)  # TF32 / bf16 matmul settings


def test_environment_switch_turns_onednn_off(monkeypatch, reprobe):
    monkeypatch.setenv(backends.ONEDNN_ENV, "0")
    assert backends.onednn_linear_ok() is False
    assert not backends.use_onednn(torch.zeros(2, 3), 2.0 ** -24)
