"""boundkit.crosscheck: ratios, the float64 re-check, violations with sample/method/layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import boundkit as bk
from boundkit.attacks.base import AttackResult
from boundkit.crosschecking import recheck_float64
from boundkit.report import read_json, write_json


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.rand(10, 6)
    return model, x


def _inflate(monkeypatch, method: str, factor: float = 1e3, only_input: bool = False):
    from boundkit.bounds import engine

    real = engine.certify

    def fake(model, x, m="sound", **kw):
        cert = real(model, x, m, **kw)
        if m == method:
            cert.radius = cert.radius * factor
            first = next(iter(cert.trace))
            cert.trace = {k: (v * factor if (not only_input or k == first) else v)
                          for k, v in cert.trace.items()}
        return cert

    monkeypatch.setattr(engine, "certify", fake)


def test_sound_has_no_violation(small):
    model, x = small
    y = torch.zeros(10, dtype=torch.long)
    res = bk.crosscheck(model, x, methods=("sound", "peck2017"), attack_budget=30, y=y)
    assert len(res) == 10 and not res.bugs
    assert res.attack_success.all()
    ratio = res.ratio("sound")
    assert np.all(ratio[np.isfinite(ratio)] <= 1.0)
    s = res.summary()
    assert set(s["methods"]) == {"sound", "peck2017"}
    assert 0 < s["methods"]["sound"]["median_ratio"] <= 1
    assert s["attack_success_rate"] == 1.0 and "accuracy" in s
    rows = res.to_rows()
    assert len(rows) == 10 and {"radius_sound", "ratio_sound", "violation"} <= set(rows[0])
    assert json.dumps(read_json(res.to_dict())["summary"]["n"]) == "10"


def test_planted_violation_names_sample_method_layer(small, monkeypatch):
    model, x = small
    _inflate(monkeypatch, "sound")
    res = bk.crosscheck(model, x[:3], attack_budget=20)
    assert res.has_bug and len(res.bugs) == 3
    v = res.bugs[0]
    assert v.index == 0 and v.method == "sound" and v.bug and v.radius > v.attack_norm
    # every claim is inflated, so already the output stage (the last Linear) fails
    assert v.layer == "_2" and v.layer_op == "linear"
    text = v.describe()
    assert "sample 0" in text and "'sound'" in text and "layer '_2' (linear)" in text
    assert res.violation_mask("sound").all()
    assert all(r["violation"] for r in res.to_rows())


def test_layer_localisation_first_stage(small, monkeypatch):
    model, x = small
    _inflate(monkeypatch, "sound", only_input=True)
    res = bk.crosscheck(model, x[:2], attack_budget=20)
    assert res.bugs
    # only the input claim is wrong: the first layer's bound is the one that failed
    assert {v.layer for v in res.bugs} == {"_0"}
    assert all(v.node_ratios[next(iter(v.node_ratios))] > 1 for v in res.bugs)


def test_peck2017_violations_are_not_bugs(small, monkeypatch):
    model, x = small
    _inflate(monkeypatch, "peck2017")
    res = bk.crosscheck(model, x[:3], methods=("sound", "peck2017"), attack_budget=20)
    assert res.violations and not res.has_bug
    assert all(v.method == "peck2017" and not v.bug for v in res.violations)
    assert "expected" in res.violations[0].describe()
    s = res.summary()
    assert s["soundness_bugs"] == 0 and s["expected_violations"] == 3
    assert not any(r["violation"] for r in res.to_rows())
    assert all(r["violation_peck2017"] for r in res.to_rows())


def test_float64_recheck_rejects_non_adversarial(small, monkeypatch):
    """An 'adversarial' point that does not change the float64 prediction is no violation."""
    model, x = small
    _inflate(monkeypatch, "sound")
    import boundkit.attacks as attacks

    def fake_attack(model, x, method="best", **kw):
        n = x.shape[0]
        with torch.no_grad():
            lab = model(x).argmax(1)
        return AttackResult(x_adv=x + 1e-7, norm=torch.full((n,), 1e-7, dtype=torch.float64),
                            success=torch.ones(n, dtype=torch.bool), found_by=["fake"] * n,
                            label=lab, adv_label=lab, method="fake")

    monkeypatch.setattr(attacks, "attack", fake_attack)
    res = bk.crosscheck(model, x[:4], attack="fake")
    assert res.violations == []
    adv, norm = recheck_float64(model, x[:4], x[:4] + 1e-7, torch.as_tensor(res.label))
    assert not adv.any()
    assert ((norm > 0) & (norm < 1e-6)).all()


def test_exact_oracle(monkeypatch):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.rand(5, 2)
    res = bk.crosscheck(model, x, attack_budget=20, exact=True, box=None)
    assert res.exact is not None and res.exact_note == ""
    fin = np.isfinite(res.exact)
    assert np.all(res.radius["sound"][fin] <= res.exact[fin] * (1 + 1e-9))
    assert np.all(res.exact[fin] <= res.attack_norm[fin] * (1 + 1e-6))
    assert "median_exact_radius" in res.summary()


def test_exact_unsupported_is_a_note():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3)).eval()
    res = bk.crosscheck(model, torch.rand(3, 1, 4, 4), attack_budget=10, exact=True)
    assert res.exact is None and "exact radius not computed" in res.exact_note
    assert "Tanh" in res.exact_note


def test_exact_radius_of_a_max_pooled_net_is_cross_checked():
    """A max-pooled CNN small enough for the exact solver gets exact radii, between the
    certified radius and the attack norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2, 3)).double().eval()
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    res = bk.crosscheck(model, x, attack_budget=50, exact=True)
    assert res.exact is not None and res.exact_note == ""
    assert np.isfinite(res.exact).all()
    assert np.all(res.radius["sound"] <= res.exact * (1 + 1e-9))
    assert np.all(res.exact <= res.attack_norm * (1 + 1e-6))
    assert not res.violations


def test_json_roundtrip_with_infinity(small, tmp_path):
    model, x = small
    res = bk.crosscheck(model, x[:3], attack_budget=10)
    res.attack_norm[0] = np.inf
    res.attack_success[0] = False
    p = write_json(res, tmp_path / "r.json")
    text = p.read_text()
    assert "Infinity" not in text and '"inf"' in text
    doc = read_json(p)
    assert doc["samples"]["attack_norm"]["best"][0] == float("inf")
    assert np.isnan(res.ratio("sound")[0])


def test_bad_input(small):
    model, x = small
    with pytest.raises(bk_errors().InputShapeError):
        bk.crosscheck(model, x[0])
    with pytest.raises(bk_errors().InputShapeError):
        bk.crosscheck(model, x[:2], y=torch.zeros(3, dtype=torch.long), attack_budget=5)


def bk_errors():
    import boundkit.errors as e

    return e


def test_crosscheck_passes_its_samples_as_starts_and_counts_missing_upper_ends(tmp_path):
    """Issue #25: the samples a cross-check holds are start points of ``best``; samples
    without an adversarial example are counted by reason in the summary and the report."""
    from boundkit.attacks.base import Outcome
    from boundkit.report import render_report

    torch.manual_seed(3)
    x = torch.rand(6, 8) * 0.6 + 0.2
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():  # every first-layer ReLU off around x[0]: zero gradient there
        w = model[0].weight
        model[0].bias.copy_(-(w @ x[0]) - 0.5 * w.norm(dim=1))
    seen = {}
    import boundkit.attacks as attacks

    real = attacks.attack

    def spy(*a, **kw):
        seen["reference"] = kw.get("reference")
        return real(*a, **kw)

    attacks.attack = spy
    try:
        res = bk.crosscheck(model, x, attack_budget=20, box=None)
    finally:
        attacks.attack = real
    assert seen["reference"] is x
    assert res.attack_success.all() and len(res.attack_outcome) == 6
    assert res.summary()["attack_missing"] == {}
    # class 0 everywhere in the box [0, 1] (a gap of at least 0.9), with a gradient
    flat = nn.Sequential(nn.Linear(8, 3)).eval()
    with torch.no_grad():
        flat[0].weight.copy_(torch.linspace(-1e-3, 1e-3, 24).reshape(3, 8))
        flat[0].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    res = bk.crosscheck(flat, x[:3], attack_budget=10)
    assert not res.attack_success.any()
    assert res.attack_outcome == [Outcome.NO_OTHER_CLASS] * 3
    assert res.summary()["attack_missing"] == {"no other class found": 3}
    assert res.to_rows()[0]["attack_outcome"] == "no other class found"
    p = write_json(res, tmp_path / "results.json")
    doc = read_json(p)
    assert doc["samples"]["attack_outcome"] == ["no other class found"] * 3
    paths = render_report(p, tmp_path)
    md = paths["markdown"].read_text()
    assert "samples without an upper end" in md and "no other class found: 3" in md
    doc["samples"]["attack_outcome"][0] = "gave up"
    write_json(doc, tmp_path / "bad.json")
    from boundkit.report.io import ResultsFileError

    with pytest.raises(ResultsFileError, match="attack_outcome"):
        read_json(tmp_path / "bad.json")


def test_branch_and_bound_searches_towards_the_verified_attack_norms(small):
    model, x = small
    res = bk.crosscheck(model, x[:4], methods=("crown", "bab"), attack_budget=20, box=None,
                        method_options={"bab": {"time_budget": 0.2}})
    cert = res.certificates["bab"]
    upper = torch.as_tensor(res.attack_norm)
    found = torch.as_tensor(res.attack_success)
    # the upper end bab searched against is the attack's verified norm, inf where none
    torch.testing.assert_close(cert.info["upper"][found], upper[found].to(torch.float64))
    assert bool((cert.radius <= upper + 1e-12).all())
    assert bool((cert.radius >= torch.as_tensor(res.radius["crown"]) - 1e-12).all())
    assert not res.violations


def test_method_options_cannot_go_through_an_executor(small):
    model, x = small
    from boundkit.errors import BadArgumentError

    with pytest.raises(BadArgumentError, match="executor"):
        bk.crosscheck(model, x[:2], methods=("bab",), executor=object(),
                      method_options={"bab": {"time_budget": 0.1}})
