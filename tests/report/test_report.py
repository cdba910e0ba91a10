"""boundkit.report on synthetic results documents (no model needed)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from boundkit.report import (
    plot_cdf,
    plot_comparison,
    plot_scatter,
    plot_waterfall,
    read_json,
    render_report,
    write_csv,
    write_html_report,
    write_json,
    write_markdown_report,
)


def _doc(n: int = 30, violation: bool = True) -> dict:
    rng = np.random.default_rng(0)
    atk = 10 ** rng.uniform(-1.5, 0, n)
    sound = atk * rng.uniform(0.05, 0.5, n)
    peck = atk * rng.uniform(0.001, 0.01, n)
    atk[3] = math.inf  # a failed attack
    nodes = ["input_1", "fc1", "relu1", "fc2"]
    values = [sound, sound * 3, sound * 3, sound * 20]
    viol = []
    if violation:
        sound[5] = atk[5] * 2
        viol.append({"index": 5, "method": "sound", "radius": sound[5], "attack_norm": atk[5],
                     "layer": "fc1", "layer_op": "linear", "bug": True,
                     "message": "SOUNDNESS BUG: sample 5, method 'sound' ... layer 'fc1'"})
    return {
        "kind": "crosscheck",
        "meta": {"model": "toy", "data": "synthetic"},
        "samples": {
            "index": list(range(n)), "label": [0] * n, "prediction": [0] * n,
            "radius": {"sound": sound.tolist(), "peck2017": peck.tolist()},
            "attack_norm": {"best": atk.tolist()},
            "found_by": ["ddn"] * n, "exact": None,
            "ratio": {"sound": (sound / atk).tolist(), "peck2017": (peck / atk).tolist()},
        },
        "traces": {"sound": {"nodes": nodes, "ops": ["input", "linear", "relu", "linear"],
                             "values": [v.tolist() for v in values]}},
        "violations": viol,
        "summary": {"n": n, "attack": "best", "attack_success_rate": 29 / 30,
                    "median_attack_norm": 0.2, "soundness_bugs": len(viol),
                    "expected_violations": 0,
                    "methods": {"sound": {"median_radius": 0.02, "median_ratio": 0.2,
                                          "sound": True}}},
    }


def test_json_roundtrip_and_csv(tmp_path):
    doc = _doc()
    p = write_json(doc, tmp_path / "r.json")
    json.loads(p.read_text())  # standard JSON (no Infinity)
    back = read_json(p)
    assert back["samples"]["attack_norm"]["best"][3] == math.inf
    c = write_csv(back, tmp_path / "r.csv")
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == 30
    assert {"index", "label", "prediction", "radius_sound", "radius_peck2017",
            "attack_norm_best", "ratio_sound", "violation"} <= set(rows[0])
    assert rows[5]["violation"] == "True" and rows[4]["violation"] == "False"
    assert rows[3]["attack_norm_best"] == "inf"


def test_read_json_refuses_other_files(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a boundkit results file"):
        read_json(f)


def test_figures(tmp_path):
    doc = _doc()
    for fn, name in ((plot_scatter, "s.png"), (plot_cdf, "c.png"), (plot_waterfall, "w.png")):
        p = fn(doc, tmp_path / name)
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000
    models = [{"name": "a", "accuracy": 0.9, "median_radius": {"sound": 0.1, "peck2017": 0.001},
               "median_attack_norm": 0.5},
              {"name": "b", "accuracy": 0.8, "median_radius": {"sound": 0.05},
               "median_attack_norm": 0.3}]
    assert plot_comparison(models, tmp_path / "cmp.png").stat().st_size > 5000
    with pytest.raises(ValueError):
        plot_waterfall({**doc, "traces": {}}, tmp_path / "none.png")


def test_render_report_single(tmp_path):
    paths = render_report(_doc(), tmp_path / "out")
    for key in ("csv", "markdown", "html", "scatter", "cdf", "waterfall"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "SOUNDNESS VIOLATIONS" in md and "sample 5" in md and "![scatter](scatter.png)" in md
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 3 and "<img src=\"scatter" not in html


def test_report_without_violation_says_so(tmp_path):
    md = write_markdown_report(_doc(violation=False), tmp_path).read_text()
    assert "No soundness violation" in md
    assert write_html_report(_doc(violation=False), tmp_path).stat().st_size > 1000


def test_render_compare(tmp_path):
    a, b = _doc(violation=False), _doc(violation=False)
    doc = {"kind": "compare", "rank_by": "median certified radius (sound)",
           "models": [{"name": "a", "accuracy": 0.9, "median_radius": {"sound": 0.1},
                       "median_attack_norm": 0.5, "soundness_bugs": 0},
                      {"name": "b", "accuracy": 0.8, "median_radius": {"sound": 0.05},
                       "median_attack_norm": 0.3, "soundness_bugs": 0}],
           "results": {"a": a, "b": b}}
    paths = render_report(doc, tmp_path)
    assert paths["comparison"].is_file()
    md = paths["markdown"].read_text()
    assert md.index("| 1 | a |") < md.index("| 2 | b |")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 60 and rows[0]["model"] == "a"
