"""Results files: JSON (one document per run) and CSV (one row per sample).

JSON has no infinity or NaN, so non-finite floats are written as the strings ``"inf"`` /
``"-inf"`` and ``null`` (NaN); :func:`read_json` turns them back into floats.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from boundkit.attacks.base import Outcome
from boundkit.bounds.method import is_guarantee
from boundkit.encoding import decode, dumps, encode
from boundkit.errors import BoundkitError

__all__ = [
    "ResultsFileError",
    "check_results",
    "decode",
    "encode",
    "read_json",
    "rows_from_results",
    "write_csv",
    "write_json",
]

KINDS = ("certify", "attack", "crosscheck", "compare")
#: the largest results file read (a results JSON of 10^6 samples is a few hundred MB)
MAX_RESULTS_BYTES = 2**31


class ResultsFileError(BoundkitError, ValueError):
    """A results file is not a boundkit results document (named field and reason)."""

PathLike = str | Path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename:
    readers see the old file or the new one, never half of one (a Ctrl-C or a full disk
    leaves the old file as it was)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_json(results: Any, path: PathLike) -> Path:
    """Write a results document (a dict, or anything with ``to_dict()``) as JSON (atomically)."""
    doc = results.to_dict() if hasattr(results, "to_dict") else results
    return atomic_write_text(path, dumps(doc, indent=1) + "\n")


#: the largest finite number a results file may hold (a radius of 1e100 is meaningless and
#: overflows the figures' axis arithmetic)
MAX_VALUE = 1e100


def _is_num(v: Any) -> bool:
    """A number a results file may hold: None or NaN (unknown), +-inf (as a float or the
    strings ``"inf"``/``"-inf"``), or a finite ``|v| <= MAX_VALUE``."""
    if v is None or v in ("inf", "-inf"):
        return True
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return math.isnan(v) or math.isinf(v) or abs(v) <= MAX_VALUE


def _is_dist(v: Any) -> bool:
    """A distance (radius, norm, ratio): unknown, +inf, or a number in [0, MAX_VALUE]."""
    if v == "-inf":
        return False
    return _is_num(v) and (v is None or v == "inf" or math.isnan(v) or v >= 0)


def _check_summary(s: Any, where: str) -> None:
    """The fields of ``summary`` the reports print, when present."""
    if not isinstance(s, dict):
        raise ResultsFileError(f"{where}: 'summary' must be an object")
    for key in ("accuracy", "attack_success_rate"):
        if key in s and not (s[key] is None or (_is_num(s[key]) and s[key] not in (
                "inf", "-inf") and 0 <= s[key] <= 1)):
            raise ResultsFileError(f"{where}: summary.{key} = {s[key]!r} is not a fraction")
    for key in ("median_attack_norm", "median_exact_radius"):
        if key in s and not _is_dist(s[key]):
            raise ResultsFileError(f"{where}: summary.{key} = {s[key]!r} is not a distance")
    for key in ("n", "soundness_bugs", "expected_violations"):
        if key in s and not (isinstance(s[key], int) and not isinstance(s[key], bool)):
            raise ResultsFileError(f"{where}: summary.{key} must be an integer")
    missing = s.get("attack_missing", {})
    if not (isinstance(missing, dict) and all(
            k in _OUTCOMES and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in missing.items())):
        raise ResultsFileError(f"{where}: summary.attack_missing must map attack outcomes to "
                               "counts")
    if "attack" in s and not isinstance(s["attack"], (str, type(None))):
        raise ResultsFileError(f"{where}: summary.attack must be a name")
    methods = s.get("methods", {})
    if not isinstance(methods, dict):
        raise ResultsFileError(f"{where}: summary.methods must be an object")
    for m, d in methods.items():
        if not isinstance(d, dict) or not all(
            _is_dist(d[k]) for k in ("median_radius", "median_ratio", "min_radius",
                                     "median_ratio_to_exact") if k in d
        ):
            raise ResultsFileError(f"{where}: summary.methods.{m} must hold distances")


#: the attack outcomes a results file may name (``boundkit.attacks.base.Outcome`` values)
_OUTCOMES = tuple(o.value for o in Outcome)


def _check_list(v: Any, n: int, where: str, item: Any, what: str) -> None:
    if not isinstance(v, list) or len(v) != n:
        got = f"a list of {len(v)}" if isinstance(v, list) else type(v).__name__
        raise ResultsFileError(f"{where}: expected a list of {n} {what}, got {got}")
    bad = next((i for i, e in enumerate(v) if not item(e)), None)
    if bad is not None:
        raise ResultsFileError(f"{where}[{bad}] = {v[bad]!r} is not {what}")


def _check_single(doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise ResultsFileError(f"{where}: not a JSON object")
    s = doc.get("samples")
    if not isinstance(s, dict):
        raise ResultsFileError(f"{where}: no 'samples' object")
    idx = s.get("index")
    if not isinstance(idx, list):
        raise ResultsFileError(f"{where}: 'samples.index' must be a list")
    n = len(idx)
    if n == 0:
        raise ResultsFileError(f"{where}: no samples (samples.index is empty)")
    is_int = lambda e: isinstance(e, int) and not isinstance(e, bool)  # noqa: E731
    _check_list(idx, n, f"{where}: samples.index", is_int, "integers")
    _check_list(s.get("prediction"), n, f"{where}: samples.prediction", is_int, "integers")
    if s.get("label") is not None:
        _check_list(s["label"], n, f"{where}: samples.label", is_int, "integers")
    for key in ("radius", "attack_norm", "ratio"):
        d = s.get(key, {})
        if not isinstance(d, dict):
            raise ResultsFileError(f"{where}: samples.{key} must be an object")
        for m, v in d.items():
            _check_list(v, n, f"{where}: samples.{key}.{m}", _is_dist, "distances (>= 0)")
    if s.get("exact") is not None:
        _check_list(s["exact"], n, f"{where}: samples.exact", _is_dist, "distances (>= 0)")
    if "distance" in s:
        _check_list(s["distance"], n, f"{where}: samples.distance",
                    lambda e: e in ("exact", "bracketed"), "'exact' or 'bracketed'")
    if "attack_success" in s:
        _check_list(s["attack_success"], n, f"{where}: samples.attack_success",
                    lambda e: isinstance(e, bool), "booleans")
    if "found_by" in s:
        _check_list(s["found_by"], n, f"{where}: samples.found_by",
                    lambda e: isinstance(e, str), "strings")
    if "attack_outcome" in s:
        _check_list(s["attack_outcome"], n, f"{where}: samples.attack_outcome",
                    lambda e: e in _OUTCOMES, f"attack outcomes ({', '.join(_OUTCOMES)})")
    viol = doc.get("violations", [])
    if not isinstance(viol, list):
        raise ResultsFileError(f"{where}: 'violations' must be a list")
    for i, v in enumerate(viol):
        if not (isinstance(v, dict) and isinstance(v.get("method"), str) and is_int(
                v.get("index")) and isinstance(v.get("message", ""), str)):
            raise ResultsFileError(f"{where}: violations[{i}] needs 'method', 'index' and a "
                                   "'message' string")
    for key in ("meta", "traces"):
        if key in doc and not isinstance(doc[key], dict):
            raise ResultsFileError(f"{where}: '{key}' must be an object")
    if "summary" in doc:
        _check_summary(doc["summary"], where)
    if not isinstance(doc.get("exact_note", ""), (str, type(None))):
        raise ResultsFileError(f"{where}: 'exact_note' must be a string")
    for m, tr in (doc.get("traces") or {}).items():
        if not (isinstance(tr, dict) and isinstance(tr.get("nodes"), list)
                and isinstance(tr.get("values"), list)
                and len(tr["nodes"]) == len(tr["values"])):
            raise ResultsFileError(f"{where}: traces.{m} needs lists 'nodes' and 'values' of "
                                   "equal length")
        for k, vals in enumerate(tr["values"]):
            _check_list(vals, n, f"{where}: traces.{m}.values[{k}]", _is_num, "numbers")


def check_results(doc: Any, source: str = "results") -> dict[str, Any]:
    """Check the structure of a results document (as written by :func:`write_json`): the
    kind, and per sample lists of matching lengths holding numbers. Raises
    :class:`ResultsFileError` naming the first bad field."""
    if not isinstance(doc, dict) or "kind" not in doc:
        raise ResultsFileError(f"{source} is not a boundkit results file (no 'kind' entry)")
    kind = doc["kind"]
    if kind not in KINDS:
        raise ResultsFileError(f"{source}: unknown kind {kind!r}; expected one of {KINDS}")
    if kind == "compare":
        models, results = doc.get("models"), doc.get("results")
        if not isinstance(models, list) or not isinstance(results, dict) or not models:
            raise ResultsFileError(f"{source}: a compare document needs 'models' (a non-empty "
                                   "list) and 'results' (an object)")
        for i, m in enumerate(models):
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                raise ResultsFileError(f"{source}: models[{i}] needs a 'name'")
            med = m.get("median_radius", {})
            if not (isinstance(med, dict) and all(_is_dist(v) for v in med.values())
                    and _is_dist(m.get("median_attack_norm"))
                    and (m.get("accuracy") is None or (_is_num(m["accuracy"])
                                                       and 0 <= m["accuracy"] <= 1))):
                raise ResultsFileError(f"{source}: models[{i}] ({m['name']!r}) needs "
                                       "distances for its medians and a fraction for accuracy")
            if m["name"] not in results:
                raise ResultsFileError(f"{source}: no results for model {m['name']!r}")
        for name, sub in results.items():
            _check_single(sub, f"{source}: results.{name}")
    else:
        _check_single(doc, source)
    return doc


def read_json(path: PathLike | dict[str, Any]) -> dict[str, Any]:
    """Read (and check, :func:`check_results`) a results document written by
    :func:`write_json` (a dict passes through the same checks)."""
    if isinstance(path, dict):
        return check_results(decode(encode(path)), "results document")
    p = Path(path)
    if p.is_dir():
        raise ResultsFileError(f"{p} is a directory; pass its results.json")
    if p.stat().st_size > MAX_RESULTS_BYTES:
        raise ResultsFileError(f"{p} is {p.stat().st_size} bytes: too large for a results file")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{p} is not a boundkit results JSON file: {exc}") from None
    except RecursionError:
        raise ResultsFileError(f"{p} is not a boundkit results JSON file: nested too deeply"
                               ) from None
    return check_results(decode(doc), str(p))


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
        if s.get("attack_outcome"):
            row["attack_outcome"] = s["attack_outcome"][k]
        if s.get("exact") is not None:
            row["exact_radius"] = _num(s["exact"][k])
        if s.get("distance"):
            row["distance"] = s["distance"][k]
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
    import io

    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())
