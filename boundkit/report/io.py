"""Results files: JSON (one document per run) and CSV (one row per sample).

JSON has no infinity or NaN, so non-finite floats are written as the strings ``"inf"`` /
``"-inf"`` and ``null`` (NaN); :func:`read_json` turns them back into floats.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from boundkit.bounds.method import is_guarantee

__all__ = ["encode", "decode", "read_json", "write_json", "write_csv", "rows_from_results"]

PathLike = str | Path


def encode(obj: Any) -> Any:
    """A JSON-safe copy of ``obj`` (numpy and torch scalars/arrays become lists)."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return encode(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensors
        return encode(obj.detach().cpu().tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(obj, Path):
        return str(obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode` for the non-finite markers."""
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    return obj


def write_json(results: Any, path: PathLike) -> Path:
    """Write a results document (a dict, or anything with ``to_dict()``) as JSON."""
    doc = results.to_dict() if hasattr(results, "to_dict") else results
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(encode(doc), indent=1, allow_nan=False) + "\n")
    return p


def read_json(path: PathLike | dict[str, Any]) -> dict[str, Any]:
    """Read a results document written by :func:`write_json` (a dict passes through)."""
    if isinstance(path, dict):
        return decode(encode(path))
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not a boundkit results JSON file: {exc}") from exc
    if not isinstance(doc, dict) or "kind" not in doc:
        raise ValueError(f"{p} is not a boundkit results file (no 'kind' entry)")
    return decode(doc)


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def rows_from_results(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample from a single-model results document: index, label, prediction,
    certified radius per method, attack norm per attack, ratio per method, violation flags."""
    s = doc["samples"]
    n = len(s["index"])
    viol: dict[str, set[int]] = {}
    for v in doc.get("violations", []):
        viol.setdefault(v["method"], set()).add(int(v["index"]))
    sound_methods = [m for m in s.get("radius", {}) if is_guarantee(m)]
    rows = []
    for k in range(n):
        idx = int(s["index"][k])
        row: dict[str, Any] = {"index": idx}
        row["label"] = "" if s.get("label") is None else s["label"][k]
        row["prediction"] = s["prediction"][k]
        for m, r in s.get("radius", {}).items():
            row[f"radius_{m}"] = _num(r[k])
        for a, r in s.get("attack_norm", {}).items():
            row[f"attack_norm_{a}"] = _num(r[k])
        if s.get("found_by"):
            row["found_by"] = s["found_by"][k]
        if s.get("exact") is not None:
            row["exact_radius"] = _num(s["exact"][k])
        for m, r in s.get("ratio", {}).items():
            row[f"ratio_{m}"] = _num(r[k])
        for m in s.get("radius", {}):
            row[f"violation_{m}"] = idx in viol.get(m, set())
        row["violation"] = any(idx in viol.get(m, set()) for m in sound_methods)
        rows.append(row)
    return rows


def write_csv(results: Any, path: PathLike) -> Path:
    """Write one row per sample (a :class:`~boundkit.CrosscheckResult`, a results dict, or
    a list of row dicts). A ``compare`` document gets a ``model`` column."""
    if isinstance(results, list):
        rows = results
    elif hasattr(results, "to_rows"):
        rows = results.to_rows()
    else:
        doc = read_json(results)
        if doc.get("kind") == "compare":
            rows = []
            for name, sub in doc["results"].items():
                rows += [{"model": name, **r} for r in rows_from_results(sub)]
        else:
            rows = rows_from_results(doc)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return p
