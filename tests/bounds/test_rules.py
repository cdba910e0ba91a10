"""Each rule against a computation done independently in the test (numpy, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import boundkit as bk
from boundkit.bounds.conv import conv_norm_lower_bound, conv_norm_upper_bound
from boundkit.bounds.lrn import lrn_global_lipschitz
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.pooling import pooling_lipschitz

D = torch.float64


def dense_conv_norm(w: torch.Tensor, hw, stride, padding, dilation) -> float:
    c = w.shape[1]
    n = c * hw[0] * hw[1]
    eye = torch.eye(n, dtype=D).reshape(n, c, *hw)
    mat = torch.nn.functional.conv2d(eye, w, None, stride, padding, dilation).reshape(n, -1)
    return float(np.linalg.svd(mat.numpy(), compute_uv=False)[0])


# ------------------------------------------------------------------ output / linear
def test_linear_classifier_bound_is_the_exact_distance_theorem_3_7():
    # f(x) = x (identity scores): the minimal perturbation is min_c' |x_c - x_c'| / sqrt(2)
    # ... measured in the direction e_c' - e_c; by hand for x = (3, 1, 2.5)
    m = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.eye(3))
    m.eval()
    x = torch.tensor([[3.0, 1.0, 2.5]])
    expected = 0.5 / math.sqrt(2.0)  # closest competitor: class 2, gap 0.5
    for method in ("sound", "peck2017"):
        # as a float64 model (its own rounding negligible) the bound is the distance
        r = float(bk.certify(m.double(), x.double(), method=method).radius[0])
        assert r == pytest.approx(expected, rel=1e-7)
        assert r <= expected
    # the float32 model's own rounding (docs/theory/numerics.md §4) costs sound a little more
    r32 = float(bk.certify(m.float(), x, method="sound").radius[0])
    assert expected * (1 - 1e-4) < r32 < expected


def test_lemma_3_5_by_hand_on_a_random_linear_classifier():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 5, generator=g, dtype=D)
    b = torch.randn(4, generator=g, dtype=D)
    x = torch.randn(6, 5, generator=g, dtype=D)
    m = nn.Linear(5, 4).double().eval()
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    wn, bn, xn = w.numpy(), b.numpy(), x.numpy()
    expected = []
    for xi in xn:
        f = wn @ xi + bn
        c = int(np.argmax(f))
        expected.append(min(
            abs(f[c] - f[k]) / np.linalg.norm(wn[c] - wn[k]) for k in range(4) if k != c
        ))
    got = bk.certify(m, x, method="peck2017").radius.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    sound = bk.certify(m, x).radius.numpy()
    np.testing.assert_allclose(sound, expected, rtol=1e-7)
    assert (sound <= np.array(expected)).all()


def test_sound_linear_layer_uses_the_exact_spectral_norm():
    # Linear(2->2) with singular values 3 and 1 then ReLU then identity head
    u = np.array([[0.6, -0.8], [0.8, 0.6]])
    w = u @ np.diag([3.0, 1.0]) @ u.T
    lin = nn.Linear(2, 2, bias=False).double()
    head = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        head.weight.copy_(torch.eye(2, dtype=D))
    m = nn.Sequential(lin, nn.ReLU(), head).eval()
    x = torch.tensor([[2.0, 1.0]], dtype=D)
    h = np.maximum(w @ np.array([2.0, 1.0]), 0)
    kappa = abs(h[0] - h[1]) / math.sqrt(2)
    r = float(bk.certify(m, x).radius[0])
    assert r == pytest.approx(kappa / 3.0, rel=1e-6) and r <= kappa / 3.0


# ------------------------------------------------------------------ convolution
@pytest.mark.parametrize(
    "c,o,k,s,p,d,h",
    [(1, 3, 3, 1, 0, 1, 6), (2, 3, 3, 2, 1, 1, 7), (2, 2, 3, 1, 2, 2, 5), (1, 1, 4, 3, 0, 1, 9)],
)
def test_conv_upper_bound_dominates_the_dense_operator_norm(c, o, k, s, p, d, h):
    w = torch.randn(o, c, k, k, dtype=D)
    exact = dense_conv_norm(w, (h, h), (s, s), (p, p), (d, d))
    up = conv_norm_upper_bound(w, (h, h), (s, s), (p, p), (d, d))
    lo = conv_norm_lower_bound(w, (h, h), (s, s), (p, p), (d, d), iters=300)
    assert lo <= exact * (1 + 1e-9)
    assert up >= exact
    assert up <= exact * 1.5  # and it is not vacuous


def test_conv_fft_bound_without_dense_shortcut_dominates(monkeypatch):
    import boundkit.bounds.conv as conv

    monkeypatch.setattr(conv, "DENSE_LIMIT", 0)
    w = torch.randn(4, 3, 3, 3, dtype=D)
    for s, p in [(1, 0), (1, 1), (2, 1), (3, 2)]:
        exact = dense_conv_norm(w, (8, 8), (s, s), (p, p), (1, 1))
        assert conv.conv_norm_upper_bound(w, (8, 8), (s, s), (p, p)) >= exact


def test_1x1_single_channel_conv_norm_is_the_weight():
    w = torch.tensor([[[[-2.5]]]], dtype=D)
    assert conv_norm_upper_bound(w, (4, 4)) == pytest.approx(2.5, rel=1e-8)


def test_peck2017_conv_rule_divides_by_the_frobenius_norm():
    conv = nn.Conv2d(1, 2, 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [0.0, 2.0]]], [[[0.0, 0.0], [4.0, 0.0]]]]))
    m = nn.Sequential(conv, nn.Flatten(), nn.Linear(2 * 2 * 2, 2).double()).eval()
    x = torch.rand(3, 1, 3, 3, dtype=D)
    cert = bk.certify(m, x, method="peck2017")
    names = list(cert.trace)
    # trace: input, conv out (= flatten in), flatten out; conv divides by ||W||_F = 5
    k_after_conv = cert.trace[names[1]]
    np.testing.assert_allclose(cert.radius.numpy(), (k_after_conv / 5.0).numpy(), rtol=1e-12)


# ------------------------------------------------------------------ pooling
def _pool_node(module: nn.Module, shape=(1, 6, 6)):
    m = nn.Sequential(module, nn.Flatten(), nn.LazyLinear(2)).double()
    m(torch.zeros(1, *shape, dtype=D))
    g = bk.capture(m.eval(), shape)
    return g.nodes[1]


def test_pooling_lipschitz_constants_by_hand():
    # non-overlapping max: 1; stride-1 3x3 max: each input in up to 9 windows -> 3
    assert pooling_lipschitz(_pool_node(nn.MaxPool2d(2))) == pytest.approx(1.0)
    assert pooling_lipschitz(_pool_node(nn.MaxPool2d(3, 1))) == pytest.approx(3.0)
    # average 2x2/2: each window divides by 4 -> 1/2; 3x3 stride 1: 9 windows * (1/9)^2*9
    assert pooling_lipschitz(_pool_node(nn.AvgPool2d(2))) == pytest.approx(0.5)
    assert pooling_lipschitz(_pool_node(nn.AvgPool2d(3, 1))) == pytest.approx(1.0)
    # L2 pooling 2x2/2: the window's L2 norm is 1-Lipschitz
    assert pooling_lipschitz(_pool_node(nn.LPPool2d(2, 2))) == pytest.approx(1.0)


def test_peck2017_pooling_divides_by_t_and_q_power():
    for pool, factor in [(nn.MaxPool2d(2), 3.0), (nn.LPPool2d(2, 2), 3.0 * 4 ** 0.5)]:
        m = nn.Sequential(nn.ReLU(), pool, nn.Flatten(), nn.Linear(9, 3)).double().eval()
        x = torch.rand(4, 1, 6, 6, dtype=D)
        cert = bk.certify(m, x, method="peck2017")
        names = list(cert.trace)
        after_pool = cert.trace[names[2]]  # output of the pooling node
        np.testing.assert_allclose(cert.radius.numpy(), (after_pool / factor).numpy(), rtol=1e-12)


# ------------------------------------------------------------------ batch norm
def _bn(c: int, gamma, beta, mean, var, eps=1e-5) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(c, eps=eps).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma, dtype=D))
        bn.bias.copy_(torch.tensor(beta, dtype=D))
        bn.running_mean.copy_(torch.tensor(mean, dtype=D))
        bn.running_var.copy_(torch.tensor(var, dtype=D))
    return bn.eval()


def test_sound_batchnorm_constant_by_hand():
    bn = _bn(2, [2.0, -6.0], [0.0, 1.0], [0.0, 0.0], [4.0, 9.0], eps=0.0)
    head = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=D))
    m = nn.Sequential(nn.Linear(2, 2).double(), nn.ReLU(), bn, head).eval()
    g = bk.capture(m, (2,))
    rule = bk.bounds.registry.get_rule("batchnorm", "sound")
    assert rule.lipschitz(g.nodes[3], g) == pytest.approx(2.0, rel=1e-8)  # |-6|/3


def test_peck2017_batchnorm_theorem_5_6_by_hand():
    gamma_, beta_, mean, var, eps = [1.5, 0.5], [0.2, -0.1], [0.1, 0.3], [2.0, 0.5], 1e-5
    bn = _bn(2, gamma_, beta_, mean, var, eps)
    head = nn.Linear(2, 3).double()
    m = nn.Sequential(bn, head).eval()
    x = torch.tensor([[0.4, -0.2]], dtype=D)
    cert = bk.certify(m, x, method="peck2017")
    kappa = float(cert.trace[list(cert.trace)[-1]][0])
    xv = np.array([0.4, -0.2])
    g, b, mu, v = map(np.array, (gamma_, beta_, mean, var))
    y = g * (xv - mu) / np.sqrt(v + eps) + b
    psi = (2 * kappa * np.linalg.norm(y) + kappa**2) / 2
    phi = g / (v + eps)
    chi = 2 * g * (xv - mu) + 2 * b * np.sqrt(v + eps)
    disc = np.sqrt(phi**2 * chi**2 + 4 * phi * g * psi)
    r1 = -(disc + phi * chi) / (2 * phi * g)
    r2 = (disc - phi * chi) / (2 * phi * g)
    expected = np.max(np.minimum(abs(r1), abs(r2)))
    assert float(cert.radius[0]) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------ LRN
def test_lrn_global_lipschitz_dominates_sampled_jacobians():
    n, alpha, beta, k = 3, 2.0, 0.75, 1.0  # large alpha: strongly non-linear
    L = lrn_global_lipschitz(n, alpha, beta, k)
    lrn = nn.LocalResponseNorm(n, alpha, beta, k)
    worst = 0.0
    for scale in (0.1, 1.0, 3.0, 10.0):
        z = (torch.randn(64, 5, dtype=D) * scale)
        jac = torch.func.vmap(torch.func.jacrev(lambda v: lrn(v.reshape(1, 5, 1, 1)).reshape(5)))(z)
        worst = max(worst, float(torch.linalg.matrix_norm(jac, ord=2).max()))
    assert worst <= L


def test_peck2017_lrn_theorem_5_9_matches_an_independent_numpy_evaluation():
    size, alpha_t, beta, k = 3, 3e-2, 0.75, 2.0
    m = nn.Sequential(nn.LocalResponseNorm(size, alpha_t, beta, k), nn.Flatten(),
                      nn.Linear(4, 3)).double().eval()
    x = torch.tensor([[[[1.0]], [[-2.0]], [[0.5]], [[3.0]]]], dtype=D)
    cert = bk.certify(m, x, method="peck2017")
    kappa = float(cert.trace[list(cert.trace)[-1]][0])
    a = x.numpy().reshape(4)
    al = alpha_t / size
    y = np.array([
        a[c] * (k + al * sum(a[j] ** 2 for j in range(max(0, c - 1), min(4, c + 2)))) ** -beta
        for c in range(4)
    ])
    xmax = abs(a).max()
    M = 4 * xmax * al * beta * (xmax**2 * al * (beta + 1) * k ** (-beta - 2) + k ** (-beta - 1))
    M += 2 * xmax * al * beta * k ** (-beta - 1)
    best = 0.0
    for c in range(4):
        win = range(max(0, c - 1), min(4, c + 2))
        Dc = k + al * sum(a[j] ** 2 for j in win)
        grad = [(-2 * a[j] * a[c] * al * beta * Dc ** (-beta - 1)) if j != c else
                (-2 * a[c] ** 2 * al * beta * Dc ** (-beta - 1) + Dc ** -beta) for j in win]
        gn = np.linalg.norm(grad)
        delta = abs(y[c]) - (np.linalg.norm(y) + kappa) / 2.0  # sqrt(4 entries)
        if delta < 0:
            best = max(best, (np.sqrt(gn**2 - 2 * M * delta) - gn) / M)
    assert float(cert.radius[0]) == pytest.approx(best, rel=1e-9)


# ------------------------------------------------------------------ MLP blocks
def test_peck2017_theorem_4_2_with_algorithm_4_1_by_hand():
    torch.manual_seed(1)
    l1, l2 = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    m = nn.Sequential(l1, nn.Tanh(), l2).eval()
    x = torch.randn(1, 3, dtype=D)
    cert = bk.certify(m, x, method="peck2017")
    V = l1.weight.detach().numpy()
    z = V @ x.numpy()[0] + l1.bias.detach().numpy()
    h = np.tanh(z)
    W, b = l2.weight.detach().numpy(), l2.bias.detach().numpy()
    f = W @ h + b
    c = int(np.argmax(f))
    kappa = abs(f[0] - f[1]) / np.linalg.norm(W[0] - W[1])
    J = np.diag(1 - h**2) @ V
    jn = np.linalg.svd(J, compute_uv=False)[0]
    s = np.abs(V).sum(1).max()
    u = 0.5 * math.log(2 + math.sqrt(3))
    B = math.sinh(u) / math.cosh(u) ** 3  # the printed tanh entry of Table 4.1
    M = B * s**2
    n = 4
    expected = (math.sqrt(jn**2 + 2 * M * math.sqrt(n) * kappa) - jn) / (M * math.sqrt(n))
    assert c in (0, 1)
    assert float(cert.radius[0]) == pytest.approx(expected, rel=1e-6)


def test_sound_smooth_block_recursion_by_hand():
    torch.manual_seed(2)
    l1, l2, l3 = nn.Linear(3, 5).double(), nn.Linear(5, 4).double(), nn.Linear(4, 3).double()
    m = nn.Sequential(l1, nn.Sigmoid(), l2, nn.Tanh(), l3).eval()
    g = bk.capture(m, (3,))
    from boundkit.bounds.mlp import SmoothBlock

    block = SmoothBlock(g.nodes[1:5])
    c = block.constants(g)
    v1 = np.linalg.svd(l1.weight.detach().numpy(), compute_uv=False)[0]
    v2 = np.linalg.svd(l2.weight.detach().numpy(), compute_uv=False)[0]
    a1, b1 = 0.25, 1 / (6 * math.sqrt(3))
    a2, b2 = 1.0, 4 / (3 * math.sqrt(3))
    n1, m1 = a1 * v1, b1 * v1**2
    n2, m2 = a2 * v2 * n1, b2 * v2**2 * n1**2 + a2 * v2 * m1
    assert c["N"] == pytest.approx(n2, rel=1e-7) and c["N"] >= n2
    assert c["M"] == pytest.approx(m2, rel=1e-7) and c["M"] >= m2


# ------------------------------------------------------------------ modulus algebra
def test_modulus_inverse_of_quadratic_is_the_positive_root():
    mod = Modulus.quadratic(2.0, 3.0)
    kappa = torch.tensor([5.0], dtype=D)
    t = float(mod.inverse(kappa)[0])
    assert t == pytest.approx(1.0, rel=1e-12) and 2 * t + 3 * t * t < 5.0


def test_modulus_composition_and_minimum():
    a = Modulus.lipschitz(2.0)
    q = Modulus.quadratic(1.0, 1.0)
    comp = q.compose(a)  # 2t + 4t^2
    t = torch.tensor([0.5], dtype=D)
    assert float(comp(t)[0]) == pytest.approx(2.0)
    mn = comp.minimum(Modulus.lipschitz(3.0))
    assert float(mn(t)[0]) == pytest.approx(1.5)
    inv = float(mn.inverse(torch.tensor([1.5], dtype=D))[0])
    assert inv == pytest.approx(0.5, rel=1e-12) and inv <= 0.5
    cubic = Modulus([torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=D)])  # t + t^3
    r = float(cubic.inverse(torch.tensor([2.0], dtype=D))[0])
    assert r == pytest.approx(1.0, rel=1e-12) and r + r**3 < 2.0


def test_certify_gives_the_same_radius_under_no_grad():
    # regression: the affine tail's Jacobian was computed as zero under torch.no_grad(),
    # which made every radius astronomically large
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 3)).eval()
    x = torch.randn(5, 3)
    free = bk.certify(m, x).radius
    with torch.no_grad():
        m2 = nn.Sequential(*[type(l)(l.in_features, l.out_features) if isinstance(l, nn.Linear)
                             else l for l in m]).eval()
        m2.load_state_dict(m.state_dict())
        under = bk.certify(m2, x).radius
    torch.testing.assert_close(free, under)
