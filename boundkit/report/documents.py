"""Markdown and self-contained HTML reports, and :func:`render_report`."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from boundkit.bounds.method import is_guarantee
from boundkit.report.figures import (
    plot_cdf,
    plot_comparison,
    plot_scatter,
    plot_waterfall,
)
from boundkit.report.io import read_json, rows_from_results, write_csv

__all__ = ["render_report", "write_html_report", "write_markdown_report", "summary_lines"]

PathLike = str | Path
MAX_ROWS = 25

EXPLAIN = {
    "scatter": (
        "Each point is one sample: the attack's norm (an upper bound on the distance to the "
        "decision boundary) on the x-axis, the certified radius (a lower bound) on the y-axis. "
        "A sound certificate is never above the dashed line y = x; the closer to it, the "
        "tighter. Points circled in red are violations."
    ),
    "cdf": (
        "Fraction of samples whose radius is at most r. The true distance of each sample to "
        "the boundary lies between its certified radius (left curves) and its attack norm "
        "(dashed); the horizontal gap is the uncertainty that remains."
    ),
    "waterfall": (
        "For one sample, the bound on the perturbation of each layer's output that is needed "
        "to change the class. It starts at the margin stage (right) and shrinks layer by "
        "layer to the certified radius at the input (left). The labelled factors show where "
        "the bound is lost."
    ),
    "comparison": (
        "Median certified radius (lower bound) and median attack norm (upper bound) per "
        "model, with accuracy: the model-selection view of Peck (2017)."
    ),
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def summary_lines(doc: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The headline table of a single-model document: (header, rows)."""
    s = doc.get("summary", {})
    header = ["quantity", "value"]
    rows: list[list[Any]] = [["samples", s.get("n", len(doc["samples"]["index"]))]]
    if "accuracy" in s:
        rows.append(["accuracy on these samples", f"{s['accuracy']:.1%}"])
    for m, d in s.get("methods", {}).items():
        tag = "" if d.get("sound", is_guarantee(m)) else " (not a guarantee)"
        rows.append([f"median certified radius, {m}{tag}", d.get("median_radius")])
        if d.get("median_ratio") is not None and not _isnan(d.get("median_ratio")):
            rows.append([f"median ratio radius / attack norm, {m}", d.get("median_ratio")])
        if "median_ratio_to_exact" in d:
            rows.append([f"median ratio radius / exact radius, {m}",
                         d["median_ratio_to_exact"]])
    if s.get("attack"):
        rows.append([f"attack success rate ({s['attack']})",
                     f"{s.get('attack_success_rate', math.nan):.1%}"])
        rows.append([f"median attack norm ({s['attack']})", s.get("median_attack_norm")])
        missing = s.get("attack_missing")
        if missing is not None:
            why = ", ".join(f"{k}: {v}" for k, v in missing.items())
            rows.append([f"samples without an upper end ({s['attack']} found no adversarial "
                         "example)", f"{sum(missing.values())}" + (f" ({why})" if why else "")])
    if "median_exact_radius" in s:
        rows.append(["median exact radius", s["median_exact_radius"]])
    if "soundness_bugs" in s:
        rows.append(["soundness violations (bugs)", s["soundness_bugs"]])
        rows.append(["peck2017 violations (expected)", s.get("expected_violations", 0)])
    return header, rows


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _figures(doc: dict[str, Any], out: Path, prefix: str = "") -> dict[str, Path]:
    figs: dict[str, Path] = {}
    s = doc["samples"]
    if s.get("radius") and s.get("attack_norm"):
        figs["scatter"] = plot_scatter(doc, out / f"{prefix}scatter.png")
    if s.get("radius") or s.get("attack_norm"):
        figs["cdf"] = plot_cdf(doc, out / f"{prefix}cdf.png")
    if doc.get("traces"):
        figs["waterfall"] = plot_waterfall(doc, out / f"{prefix}waterfall.png")
    return figs


def _single_sections(doc: dict[str, Any], figs: dict[str, Path], title: str) -> list[dict]:
    """Report content as a list of blocks: {"h": str} | {"p": str} | {"table": (h, rows)} |
    {"img": Path, "caption": str} | {"pre": str}."""
    blocks: list[dict] = [{"h": title}]
    meta = doc.get("meta", {})
    if meta:
        blocks.append({"p": ", ".join(f"{k}: {v}" for k, v in meta.items()
                                      if isinstance(v, (str, int, float)))})
    blocks.append({"table": summary_lines(doc)})
    viol = doc.get("violations", [])
    bugs = [v for v in viol if v.get("bug")]
    if bugs:
        blocks.append({"h2": "SOUNDNESS VIOLATIONS (bugs in boundkit)"})
        blocks.append({"pre": "\n".join(v["message"] for v in bugs)})
    elif "violations" in doc:
        blocks.append({"p": "No soundness violation: every sound certified radius is below "
                             "the float64-verified norm of every adversarial example found."})
    expected = [v for v in viol if not v.get("bug")]
    if expected:
        blocks.append({"p": f"{len(expected)} sample(s) where the peck2017 number exceeds an "
                             "adversarial norm: expected, the thesis's formulas are not sound "
                             "(see the user guide)."})
    for key, p in figs.items():
        blocks.append({"img": p, "caption": EXPLAIN[key]})
    if doc.get("exact_note"):
        blocks.append({"p": doc["exact_note"]})
    rows = rows_from_results(doc)
    if rows:
        blocks.append({"h2": f"Per-sample results (first {min(MAX_ROWS, len(rows))} of "
                             f"{len(rows)}; all in the CSV)", "samples": True})
        header = list(rows[0])
        blocks.append({"table": (header, [[r.get(h) for h in header] for r in rows[:MAX_ROWS]]),
                       "samples": True})
    return blocks


def _blocks(doc: dict[str, Any], out: Path) -> list[dict]:
    if doc.get("kind") == "compare":
        blocks: list[dict] = [{"h": "boundkit model comparison"}]
        header = ["rank", "model", "accuracy"]
        models = doc["models"]
        methods: list[str] = []
        for m in models:
            methods += [k for k in m.get("median_radius", {}) if k not in methods]
        header += [f"median certified ({k})" for k in methods]
        header += ["median attack norm", "samples without an upper end", "soundness bugs",
                   "order with the next"]
        verdicts = doc.get("ranking", [])
        rows = []
        for rank, m in enumerate(models, 1):
            missing = m.get("attack_missing") or {}
            why = ", ".join(f"{k}: {v}" for k, v in missing.items())
            v = verdicts[rank - 1] if rank - 1 < len(verdicts) else None
            rows.append([rank, m["name"], m.get("accuracy")]
                        + [m.get("median_radius", {}).get(k) for k in methods]
                        + [m.get("median_attack_norm"),
                           f"{sum(missing.values())}" + (f" ({why})" if why else ""),
                           m.get("soundness_bugs", 0),
                           "" if v is None else
                           f"{v['label']} ({v['samples_decided']:.0%} of samples proven)"])
        blocks.append({"p": f"Models listed by {doc.get('rank_by', 'median certified radius')}; "
                             "same samples for every model. An order is decided by proof only "
                             "where one model's median certified radius exceeds the next "
                             "one's median attack norm (the true distances lie between the "
                             "two); otherwise it is undecided at this budget: the bounds, not "
                             "the models, may be what differs."})
        blocks.append({"table": (header, rows)})
        blocks.append({"img": plot_comparison(doc, out / "comparison.png"),
                       "caption": EXPLAIN["comparison"]})
        for i, (name, sub) in enumerate(doc["results"].items()):
            figs = _figures(sub, out, prefix=f"m{i}_")
            sec = _single_sections(sub, figs, f"Model {name}")
            sec[0] = {"h2": f"Model {name}"}
            blocks += [b for b in sec if not b.get("samples")]
        return blocks
    title = {"crosscheck": "boundkit cross-check report", "certify": "boundkit certificates",
             "attack": "boundkit attack results"}.get(doc.get("kind", ""), "boundkit report")
    return _single_sections(doc, _figures(doc, out), title)


def _markdown(blocks: list[dict], out: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if "h" in b:
            lines += [f"# {b['h']}", ""]
        elif "h2" in b:
            lines += [f"## {b['h2']}", ""]
        elif "p" in b:
            lines += [b["p"], ""]
        elif "pre" in b:
            lines += ["```", b["pre"], "```", ""]
        elif "table" in b:
            lines += _table(*b["table"]) + [""]
        elif "img" in b:
            rel = Path(b["img"]).relative_to(out)
            lines += [f"![{rel.stem}]({rel.as_posix()})", "", f"*{b['caption']}*", ""]
    return "\n".join(lines)


def _html(blocks: list[dict]) -> str:
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if "h" in b:
            body.append(f"<h1>{e(b['h'])}</h1>")
        elif "h2" in b:
            cls = ' class="bad"' if "VIOLATION" in b["h2"] else ""
            body.append(f"<h2{cls}>{e(b['h2'])}</h2>")
        elif "p" in b:
            body.append(f"<p>{e(b['p'])}</p>")
        elif "pre" in b:
            body.append(f"<pre class=\"bad\">{e(b['pre'])}</pre>")
        elif "table" in b:
            header, rows = b["table"]
            t = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"]
            for r in rows:
                t.append("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r) + "</tr>")
            body.append("\n".join(t) + "</table>")
        elif "img" in b:
            data = base64.b64encode(Path(b["img"]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" '
                        f'alt="{e(Path(b["img"]).stem)}"><figcaption>{e(b["caption"])}'
                        "</figcaption></figure>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:13px;color:#555}"
        ".bad{color:#b00}pre{background:#fff3f3;padding:1em;white-space:pre-wrap}"
    )
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>boundkit report"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def write_markdown_report(results: Any, out_dir: PathLike) -> Path:
    """Write ``report.md`` (with its PNG figures next to it) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = read_json(results)
    p = out / "report.md"
    p.write_text(_markdown(_blocks(doc, out), out))
    return p


def write_html_report(results: Any, out_dir: PathLike) -> Path:
    """Write a self-contained ``report.html`` (figures embedded as base64) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = read_json(results)
    p = out / "report.html"
    p.write_text(_html(_blocks(doc, out)))
    return p


def render_report(results_json: Any, out_dir: PathLike) -> dict[str, Path]:
    """Everything for one results document: ``results.csv``, the figures, ``report.md`` and
    ``report.html`` in ``out_dir``. Returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = read_json(results_json)
    blocks = _blocks(doc, out)
    paths: dict[str, Path] = {"csv": write_csv(doc, out / "results.csv")}
    md = out / "report.md"
    md.write_text(_markdown(blocks, out))
    paths["markdown"] = md
    h = out / "report.html"
    h.write_text(_html(blocks))
    paths["html"] = h
    for b in blocks:
        if "img" in b:
            paths[Path(b["img"]).stem] = Path(b["img"])
    return paths
