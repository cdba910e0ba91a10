"""Concrete counterexamples to the steps of Peck (2017) that ``docs/theory/peck2017.md`` lists.

Every test builds a small, fully determined network or function, computes the true
minimal perturbation (closed form, or an upper bound on it from an explicit adversarial
perturbation found by a search written here), and asserts

* that the thesis's statement fails on it (``method="peck2017"`` exceeds the true minimal
  perturbation, or the inequality of the lemma is violated), and
* that ``method="sound"`` is not violated on the same example.

The numbers quoted in the docstrings are the ones ``docs/theory/peck2017.md`` reports.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import boundkit as bk
from boundkit.bounds.activation import derived_bounds, thesis_table_4_1
from boundkit.bounds.mlp import algorithm_4_1
from boundkit.bounds.pooling import pooling_lipschitz
from boundkit.graph.capture import capture

DT = torch.float64


def _radii(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(peck2017 radius, sound radius) of the first sample."""
    peck = float(bk.certify(model, x, method="peck2017").radius[0])
    sound = float(bk.certify(model, x, method="sound").radius[0])
    return peck, sound


def _affine_exact_radius(a: torch.Tensor, logits: torch.Tensor) -> float:
    """Exact minimal L2 perturbation of an affine classifier ``f(x) = A x + c``:
    ``min_{c'} (f_c - f_c') / ||A_c - A_c'||`` (thesis Theorem 3.7)."""
    a, logits = a.detach(), logits.detach()
    c = int(logits.argmax())
    return min(
        float((logits[c] - logits[j]) / (a[c] - a[j]).norm())
        for j in range(logits.shape[0])
        if j != c
    )


def _dense_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Explicit matrix [out, in] of a bias-free linear layer."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=DT).reshape(n, *in_shape)
    with torch.no_grad():
        return layer(eye).reshape(n, -1).T


# --------------------------------------------------------------------------- Lemma A.4
def _ones_conv() -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return conv


def test_lemma_A4_fails_with_overlapping_windows():
    """3x3 all-ones kernel, stride 1, 8x8 input: ||W||_F = 3 but ||W * R||_F = 7.975 for the
    top right-singular vector R (||R||_F = 1). Without overlap (stride 3) the lemma holds."""
    conv = _ones_conv()
    mat = _dense_matrix(conv, (1, 8, 8))
    _, s, vh = torch.linalg.svd(mat)
    r = vh[0].reshape(1, 1, 8, 8)
    with torch.no_grad():
        lhs = float(conv(r).norm())
    w_fro = float(conv.weight.detach().norm())
    assert w_fro == 3.0
    assert abs(lhs - float(s[0])) < 1e-9
    assert lhs > 2.6 * w_fro * float(r.norm())  # 7.975 > 3
    # the simplest instance: 1-D kernel [1, 1] on R = [1, 1, 1]: 2*sqrt(2) > sqrt(2)*sqrt(3)
    k = torch.ones(1, 1, 1, 2, dtype=DT)
    rr = torch.ones(1, 1, 1, 3, dtype=DT)
    assert float(F.conv2d(rr, k).norm()) > float(k.norm() * rr.norm())
    # non-overlapping windows (stride >= kernel): Cauchy-Schwarz per window, the lemma holds
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(4, 2, 3, 3, generator=gen, dtype=DT)
        rr = torch.randn(1, 2, 9, 9, generator=gen, dtype=DT)
        assert float(F.conv2d(rr, w, stride=3).norm()) <= float(w.norm() * rr.norm()) * (1 + 1e-12)


def test_theorem_5_1_conv_radius_exceeds_exact():
    """Conv(3x3 ones) -> Flatten -> Linear is an affine classifier with exact radius 0.1;
    peck2017 (kappa / ||W||_F) certifies 0.2658."""
    conv = _ones_conv()
    mat = _dense_matrix(conv, (1, 8, 8))
    u, _, vh = torch.linalg.svd(mat)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(36, 2)).double().eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.stack([u[:, 0] / 2, -u[:, 0] / 2]))
        model[2].bias.zero_()
    x = 0.1 * vh[0].reshape(1, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)[0]
    exact = _affine_exact_radius(model[2].weight @ mat, logits)
    assert abs(exact - 0.1) < 1e-9
    peck, sound = _radii(model, x)
    assert peck > 2.6 * exact  # 0.2658 > 0.1
    assert sound <= exact


# --------------------------------------------------------------------------- Theorem 5.3
def test_theorem_5_3_counting_step_fails_but_conclusion_holds():
    """Eq. (5.4) ("some |z(R)| >= kappa/t") is false for c > 1 channels, and Assumption 5.2
    is one-sided (Z(R) = 0 while Z(X+R) != Z(X)); the final bound kappa/t nevertheless
    holds for max and average pooling because every input lies in at most t^2 windows of
    its channel, so the thesis's factor t is never below the true Lipschitz constant."""
    # (5.4): c = 4 channels, t = 2: all c t^2 = 16 entries equal kappa/(t sqrt(c)) = 0.25
    kappa, t, c = 1.0, 2, 4
    z = torch.full((c, t, t), kappa / (t * math.sqrt(c)), dtype=DT)
    assert abs(float(z.norm()) - kappa) < 1e-12
    assert float(z.abs().max()) < kappa / t
    # Assumption 5.2 only bounds the change from above: window X = [1, 0], R = [-1, 0]
    xw = torch.tensor([[[[1.0, 0.0]]]], dtype=DT)
    rw = torch.tensor([[[[-1.0, 0.0]]]], dtype=DT)
    change = float(F.max_pool2d(xw + rw, (1, 2)) - F.max_pool2d(xw, (1, 2)))
    assert change == -1.0 and float(F.max_pool2d(rw, (1, 2))) == 0.0
    # ... but the conclusion ||R|| >= kappa / t holds: t >= the sound Lipschitz constant
    cases = [
        nn.MaxPool2d(3, stride=1),
        nn.MaxPool2d(2, stride=2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.AvgPool2d(3, stride=1),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    ]
    for layer in cases:
        model = nn.Sequential(layer, nn.Flatten()).double().eval()
        g = capture(model, torch.zeros(1, 3, 7, 7, dtype=DT))
        node = next(n for n in g.nodes if n.op in ("maxpool2d", "avgpool2d"))
        _, oh, ow = node.out_shape
        assert pooling_lipschitz(node) <= math.sqrt(oh * ow) * (1 + 1e-8)


# --------------------------------------------------------------------------- BatchNorm
def _bn_model(gamma: list[float], var: float, w: list[list[float]], b: list[float]) -> nn.Module:
    d = len(gamma)
    model = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, len(w))).double().eval()
    with torch.no_grad():
        bn = model[0]
        bn.weight.copy_(torch.tensor(gamma, dtype=DT))
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(var - bn.eps)  # var + eps = var exactly
        model[1].weight.copy_(torch.tensor(w, dtype=DT))
        model[1].bias.copy_(torch.tensor(b, dtype=DT))
    return model


def _bn_exact(model: nn.Module, x: torch.Tensor) -> float:
    bn, lin = model[0], model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        return _affine_exact_radius(lin.weight * scale, model(x)[0])


def test_lemma_5_4_theorem_5_6_batchnorm_max_over_components_fails():
    """BN(gamma = (1, 0.01)) -> identity linear at x = (1, 0.5): exact radius 0.99495;
    peck2017 returns max_j delta_j = 97.02 (the delta of the nearly-constant component)."""
    model = _bn_model([1.0, 0.01], 1.0, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    x = torch.tensor([[1.0, 0.5]], dtype=DT)
    exact = _bn_exact(model, x)
    assert abs(exact - 0.99495) < 1e-4
    peck, sound = _radii(model, x)
    assert peck > 90 * exact
    assert sound <= exact
    # Lemma 5.4 itself: the minimal perturbation r* has |r*_2| < delta_2 (= peck's max)
    scale = torch.tensor([1.0, 0.01], dtype=DT)
    a = model[1].weight.detach() * scale
    with torch.no_grad():
        f = model(x)[0]
    direction = (a[1] - a[0]) / (a[1] - a[0]).norm()
    r_star = exact * direction
    with torch.no_grad():
        f_adv = model(x + 1.000001 * r_star.unsqueeze(0))[0]
    assert int(f_adv.argmax()) != int(f.argmax())
    assert float(r_star.abs().max()) <= float(r_star.norm()) < peck


def test_norm_increase_framing_fails_for_batchnorm_even_with_min():
    """Eqs. (5.1)/(5.11) and the BN derivation ask for ||out(X+R)|| = ||out(X)|| + kappa, but
    a class change only needs ||out(X+R) - out(X)|| >= kappa, which a perturbation
    orthogonal to out(X) achieves without growing the norm by kappa. BN(gamma = (0.01, 1))
    with y = (10, 0) and a classifier on y_2 (margin 0.1): exact radius 0.1, but even
    min_j delta_j = 1.0025 (and the published max_j delta_j = 5.012)."""
    model = _bn_model([0.01, 1.0], 1.0, [[0.0, 0.0], [0.0, 1.0]], [0.1, 0.0])
    x = torch.tensor([[1000.0, 0.0]], dtype=DT)
    exact = _bn_exact(model, x)
    assert abs(exact - 0.1) < 1e-9
    # the thesis's delta_j, eq. (5.10), with kappa from Lemma 3.5 at the last layer
    bn = model[0]
    var = bn.running_var + bn.eps
    gam, bet, mu = bn.weight.double(), bn.bias.double(), bn.running_mean
    with torch.no_grad():
        y = bn(x)[0]
        logits = model(x)[0]
    w = model[1].weight
    kappa = float(((logits[0] - logits[1]).abs() / (w[0] - w[1]).norm()).detach())
    phi = gam / var
    chi = 2 * gam * (x[0] - mu) + 2 * bet * torch.sqrt(var)
    psi = (2 * kappa * float(y.norm()) + kappa**2) / 2
    disc = torch.sqrt(phi**2 * chi**2 + 4 * phi * gam * psi)
    rho1 = -(disc + phi * chi) / (2 * phi * gam)
    rho2 = (disc - phi * chi) / (2 * phi * gam)
    delta = torch.minimum(rho1.abs(), rho2.abs())
    assert float(delta.min().detach()) > 10 * exact  # 1.0025 > 0.1
    peck, sound = _radii(model, x)
    assert abs(peck - float(delta.max().detach())) < 1e-9 * peck
    assert sound <= exact
    # the adversarial perturbation along y_2 barely changes ||y||
    with torch.no_grad():
        y_adv = bn(x + torch.tensor([[0.0, 0.1]], dtype=DT))[0]
    assert float(y_adv.norm() - y.norm()) < 0.01 * kappa


# --------------------------------------------------------------------------- LRN
def _lrn_model() -> tuple[nn.Module, torch.Tensor]:
    c = 4
    model = nn.Sequential(
        nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=1.0), nn.Flatten(), nn.Linear(c, 2)
    ).double().eval()
    with torch.no_grad():
        w = torch.zeros(2, c, dtype=DT)
        w[0, c - 1] = 1.0
        model[2].weight.copy_(w)
        model[2].bias.copy_(torch.tensor([0.01, 0.0], dtype=DT))
    x = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=DT).reshape(1, c, 1, 1)
    return model, x


def test_lemma_5_8_theorem_5_9_lrn_max_over_components_fails():
    """LRN(n=3, alpha=0.01, beta=0.75, k=1) on a = (1, 1, 1, 0), classifier y_4 + 0.01:
    moving a_4 by 0.010025 changes the class; peck2017 certifies 0.8626 (the lambda of a
    component whose only role is to be small)."""
    model, x = _lrn_model()
    lo, hi = 0.0, 1.0  # bisection along -e_4 for the smallest class-changing step
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        xx = x.clone()
        xx[0, 3, 0, 0] -= mid
        with torch.no_grad():
            changed = int(model(xx)[0].argmax()) != 0
        lo, hi = (lo, mid) if changed else (mid, hi)
    xx = x.clone()
    xx[0, 3, 0, 0] -= hi
    with torch.no_grad():
        assert int(model(xx)[0].argmax()) != 0
    found = hi  # an actual adversarial perturbation: the exact radius is <= found
    assert abs(found - 0.010025) < 1e-5
    peck, sound = _radii(model, x)
    assert peck > 80 * found  # 0.8626 > 0.010025
    assert sound <= found


def _lrn_channels(a: torch.Tensor, n: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """LRN at one spatial position, thesis notation (alpha = torch's alpha / n)."""
    s = F.pad((a * a).reshape(1, 1, -1), (n // 2, (n - 1) // 2)).unfold(2, n, 1).sum(-1)
    return a * (k + alpha * s.reshape(-1)) ** (-beta)


def test_lemma_5_11_xmax_taken_at_X_not_on_segment():
    """M_a of Lemma 5.11 uses x_max at X. With X = (0.1, 0.1, 0.1), thesis alpha = 1,
    beta = 0.75, k = 1, n = 3: M_a(X) = 0.4553 bounds the second partials of b_2 at X, but
    at X + R, R = (0, 0.5, 0), |d^2 b_2 / da_2^2| = 1.069, and the Taylor remainder of b_2
    over the segment is |eps| = 0.1085 > M_a(X)/2 ||R||^2 = 0.0569 (the inequality behind
    eq. (5.12))."""
    n, alpha, beta, k = 3, 1.0, 0.75, 1.0
    x = torch.tensor([0.1, 0.1, 0.1], dtype=DT)
    r = torch.tensor([0.0, 0.5, 0.0], dtype=DT)
    xmax = float(x.abs().max())
    m_a = 4 * xmax * alpha * beta * (
        xmax**2 * alpha * (beta + 1) * k ** (-beta - 2) + k ** (-beta - 1)
    ) + 2 * xmax * alpha * beta * k ** (-beta - 1)

    def comp(v: torch.Tensor) -> torch.Tensor:
        return _lrn_channels(v, n, alpha, beta, k)[1]

    assert float(torch.autograd.functional.hessian(comp, x).abs().max()) <= m_a
    hess = torch.autograd.functional.hessian(comp, x + r)
    assert float(hess.abs().max()) > 2 * m_a
    # the Taylor inequality (5.12) relies on: |eps_a| <= M_a / 2 ||R||^2 -- violated
    grad = torch.autograd.functional.jacobian(comp, x)
    eps = float(comp(x + r) - comp(x) - grad @ r)
    assert abs(eps) > m_a / 2 * float(r.norm()) ** 2


def test_lemma_5_11_mixed_partials_are_not_zero():
    """The proof of Lemma 5.11 sets d^2 b_a / (dx_j1 dx_j2) = 0 for j1 != j2, both != a; the
    product rule gives 4 x_a x_j1 x_j2 alpha^2 beta (beta+1) D^(-beta-2) != 0."""
    n, alpha, beta, k = 5, 1.0, 0.75, 1.0
    x = torch.tensor([0.5, -0.7, 0.9, 0.3, 0.4], dtype=DT)

    def comp(v: torch.Tensor) -> torch.Tensor:
        return _lrn_channels(v, n, alpha, beta, k)[2]

    hess = torch.autograd.functional.hessian(comp, x)
    d = k + alpha * float((x * x).sum())
    formula = 4 * x[2] * x[0] * x[1] * alpha**2 * beta * (beta + 1) * d ** (-beta - 2)
    assert abs(float(hess[0, 1])) > 0.01
    assert abs(float(hess[0, 1] - formula)) < 1e-12


# --------------------------------------------------------------------------- Theorem A.1
def test_theorem_A1_remainder_misses_dimension_factor():
    """f(x) = (sum x)^2 / 2 on R^d has every second partial equal to 1 (M = 1, m = 1), and
    its Taylor remainder at r = t (1, ..., 1) is (d/2) ||r||^2 > (M/2) sqrt(m) ||r||^2."""
    for d in (2, 5, 30):
        x = torch.linspace(-1, 1, d, dtype=DT)
        r = torch.full((d,), 0.3, dtype=DT)

        def f(v: torch.Tensor) -> torch.Tensor:
            return v.sum() ** 2 / 2

        hess = torch.autograd.functional.hessian(f, x)
        m_entry = float(hess.abs().max())
        assert m_entry == 1.0
        grad = torch.autograd.functional.jacobian(f, x)
        eps = float(f(x + r) - f(x) - grad @ r)
        bound = m_entry / 2 * math.sqrt(1) * float(r.norm()) ** 2
        assert abs(eps - d / 2 * float(r.norm()) ** 2) < 1e-9
        assert eps > bound * (d - 0.5)  # off by the factor d


def test_algorithm_4_1_row_sums_bound_the_hessian_operator_norm():
    """Why Theorem 4.2 + Algorithm 4.1 survive the defect of Theorem A.1: with the l1 row
    sums s_i, M bounds max_i ||Hess h_i||_2 (not only the entries), by induction on the
    2->inf norm of the Jacobian. Checked at random points of random sigmoid MLPs with the
    correct constants (A, B) = (1/4, 1/(6 sqrt 3))."""
    gen = torch.Generator().manual_seed(1)
    a_s, b_s = derived_bounds("sigmoid")
    for _ in range(5):
        model = nn.Sequential(
            nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 2)
        ).double().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(3 * torch.randn(p.shape, generator=gen, dtype=DT))
        g = capture(model, torch.zeros(1, 4, dtype=DT))
        block = [n for n in g.nodes if n.op in ("linear", "sigmoid")][:4]
        m = algorithm_4_1(block, {"sigmoid": (a_s, b_s)})
        for _ in range(10):
            x = torch.randn(4, generator=gen, dtype=DT)
            for i in range(3):

                def h(v: torch.Tensor, i: int = i, net: nn.Module = model) -> torch.Tensor:
                    return net[:4](v.unsqueeze(0))[0, i]

                hess = torch.autograd.functional.hessian(h, x)
                assert float(torch.linalg.matrix_norm(hess, ord=2)) <= m


# --------------------------------------------------------------------------- Table 4.1
def test_table_4_1_tanh_second_derivative_is_half_the_supremum():
    """sinh(u)/cosh(u)^3 at u = ln(2 + sqrt 3)/2 equals 2/(3 sqrt 3) = 0.3849, half of
    sup|tanh''| = 4/(3 sqrt 3) = 0.7698 (attained at z = -u)."""
    printed = thesis_table_4_1()["tanh"][1]
    assert abs(printed - 2 / (3 * math.sqrt(3))) < 1e-15
    z = torch.linspace(-4, 4, 800_001, dtype=DT)
    tanh2 = (-2 * torch.tanh(z) / torch.cosh(z) ** 2).abs()
    sup = float(tanh2.max())
    assert abs(sup - 4 / (3 * math.sqrt(3))) < 1e-9
    assert abs(printed / sup - 0.5) < 1e-9
    u = 0.5 * math.log(2 + math.sqrt(3))
    assert abs(float(z[tanh2.argmax()]).__abs__() - u) < 1e-4


def _tanh_model(v: float, z0: float, dz: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(1, 1), nn.Tanh(), nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(v)
        model[0].bias.fill_(z0)
        model[2].weight.copy_(torch.tensor([[0.0], [1.0]], dtype=DT))
        model[2].bias.copy_(torch.tensor([math.tanh(z0 + dz), 0.0], dtype=DT))
    return model


def test_theorem_4_2_tanh_mlp_radius_exceeds_exact():
    """x -> tanh(10 x - 0.658) -> 2 classes with boundary at tanh(-0.158): the class changes
    exactly at x = 0.05 (tanh is monotone; confirmed on a dense grid). peck2017 with the
    printed B = 0.385 certifies 0.05446; with the true B = 0.770 the same formula gives
    0.0491 (the sound method: 0.04910)."""
    model = _tanh_model(10.0, -0.658, 0.5)
    x = torch.zeros(1, 1, dtype=DT)
    grid = torch.linspace(-0.2, 0.2, 400_001, dtype=DT).unsqueeze(1)
    with torch.no_grad():
        labels = model(grid).argmax(1)
        base = int(model(x)[0].argmax())
    flipped = grid[labels != base, 0].abs()
    exact = float(flipped.min())
    assert abs(exact - 0.05) < 2e-6
    peck, sound = _radii(model, x)
    assert peck > 1.08 * exact  # 0.05446 > 0.05
    assert sound <= exact


def test_theorem_4_2_relu_second_derivative_bound_fails():
    """x -> ReLU(x - 0.01) -> 2 classes, boundary at ReLU = 0.1: exact radius 0.11 (the
    pre-activation must cross the kink and climb 0.1). Theorem 4.2 with B_ReLU = 1 and
    J(x) = 0 gives sqrt(2 kappa / M) = sqrt(0.2) = 0.4472; sound: 0.1."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-0.01)
        model[2].weight.copy_(torch.tensor([[1.0], [-1.0]], dtype=DT))
        model[2].bias.copy_(torch.tensor([0.0, 0.2], dtype=DT))
    x = torch.zeros(1, 1, dtype=DT)
    # closed form: class 1 while 2 ReLU(x - 0.01) < 0.2, i.e. for x < 0.11
    exact = 0.11
    with torch.no_grad():
        assert int(model(x)[0].argmax()) == 1
        assert int(model(torch.full((1, 1), exact + 1e-9, dtype=DT))[0].argmax()) == 0
        assert int(model(torch.full((1, 1), exact - 1e-9, dtype=DT))[0].argmax()) == 1
        grid = torch.linspace(-1, 1, 200_001, dtype=DT).unsqueeze(1)
        assert bool((model(grid).argmax(1)[grid[:, 0].abs() < exact - 1e-9] == 1).all())
    peck, sound = _radii(model, x)
    assert abs(peck - math.sqrt(0.2)) < 1e-6
    assert peck > 4 * exact
    assert sound <= exact
