"""Hostile-input soak of the ONNX importer (issue #26): generated ONNX files with random ops,
attributes, shapes, constants and opsets, each loaded by ``boundkit.models.load_model`` in
a child process; every load must end in a model or a one-line ``ModelFileError`` (never
another exception, never a hang), and the child's peak memory is recorded per file.

Files come from seven generators (``KINDS``): well-formed random convolutional networks with
random widths, depths and constants (``net``: these should load, and their peak memory
is the importer's honest cost); random chains of the supported ops with random (often
wrong) attributes on a random input (``chain``); random constant subgraphs folded by
the importer (``fold``); allocation bombs (huge ConstantOfShape, Range, broadcasts, Gather,
Concat, Pad, Conv outputs: ``bomb``); valid networks with one attribute mutated (``attrs``);
random opsets and op names (``opset``); byte flips and truncations of valid files
(``bytes``).

Each file is loaded in a child forked from a parent that has already imported torch, onnx,
onnxruntime and boundkit (so the child's peak RSS, ``ru_maxrss``, includes them, as a user's
process would); a child running longer than ``--timeout`` seconds is killed and counted.
Writes ``docs/results/onnx_soak.md``:

    OMP_NUM_THREADS=1 python -m benchmarks.onnx_soak --n 330 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("net", "chain", "fold", "bomb", "attrs", "opset", "bytes")
N = helper.make_node
F32 = TensorProto.FLOAT


class Gen:
    """One generated file: nodes, initialisers, the input's shape, the opset."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self.k = 0

    def name(self, kind: str) -> str:
        self.k += 1
        return f"{kind.lower()}_{self.k}"

    def const(self, arr: Any) -> str:
        n = self.name("c")
        self.inits[n] = np.asarray(arr)
        return n

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op)
        self.nodes.append(N(op, inputs, [out], name=out, **attrs))
        return out

    # -- random values --------------------------------------------------------------
    def dim(self, big: bool = False) -> int:
        r = self.rng
        if big:
            return int(r.choice([0, 1, 7, 1 << 12, 1 << 15, 1 << 20, 1 << 28, 1 << 40]))
        return int(r.choice([0, 1, 1, 2, 3, 4, 5, 8, 16]))

    def small_int(self) -> int:
        return int(self.rng.choice([-(1 << 62), -5, -2, -1, 0, 0, 1, 1, 2, 3, 4, 7, 1 << 31]))

    def value(self, shape: tuple[int, ...]) -> np.ndarray:
        r = self.rng
        kind = r.integers(6)
        if kind == 0:
            return np.zeros(shape, np.float32)
        if kind == 1:
            return np.full(shape, r.choice([1e38, -1e38, 1e-45, 3.0]), np.float32)
        if kind == 2:
            return r.integers(-3, 4, shape).astype(np.int64)
        return (r.standard_normal(shape) * 10 ** r.uniform(-3, 3)).astype(np.float32)

    def attr(self, name: str) -> Any:
        """A random value for an attribute of that name, often wrong."""
        r = self.rng
        pick = r.integers(8)
        if pick == 0:
            return float(r.choice([np.nan, np.inf, -1.0, 0.5, 1e30]))
        if pick == 1:
            return [self.small_int() for _ in range(r.integers(1, 6))]
        if pick == 2:
            return str(r.choice(["NOTSET", "VALID", "SAME_UPPER", "constant", "reflect", "x"]))
        if name in ("kernel_shape", "strides", "dilations"):
            return [int(r.integers(1, 4)) for _ in range(2)]
        if name == "pads":
            return [int(r.integers(0, 3)) for _ in range(4)]
        if name == "perm":
            return [int(v) for v in r.permutation(int(r.integers(1, 5)))]
        if name in ("axes",):
            return [int(r.integers(-4, 5)) for _ in range(r.integers(1, 3))]
        return self.small_int()


def _shape(g: Gen) -> tuple[int, ...]:
    r = g.rng
    return tuple(int(r.choice([1, 2, 3, 4, 5, 8])) for _ in range(r.integers(0, 4)))


OPS_ATTRS = {
    "Relu": [], "Sigmoid": [], "Tanh": [], "Softplus": [], "Identity": [], "Dropout": [],
    "LeakyRelu": ["alpha"], "Flatten": ["axis"], "Transpose": ["perm"], "Softmax": ["axis"],
    "Conv": ["kernel_shape", "pads", "strides", "dilations", "group"],
    "MaxPool": ["kernel_shape", "pads", "strides", "ceil_mode"],
    "AveragePool": ["kernel_shape", "pads", "strides", "count_include_pad"],
    "GlobalAveragePool": [], "BatchNormalization": ["epsilon"], "LRN": ["size", "alpha"],
    "Gemm": ["transA", "transB", "alpha", "beta"], "MatMul": [],
    "Add": [], "Sub": [], "Mul": [], "Div": [], "Concat": ["axis"], "Reshape": ["allowzero"],
    "Squeeze": [], "Unsqueeze": [], "Pad": ["mode"], "Slice": [],
}
FOLD_OPS = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Concat", "Gather", "Reshape",
            "Transpose", "Slice", "Cast", "Unsqueeze", "Squeeze", "Flatten", "Neg", "Sqrt",
            "Reciprocal", "Shape", "ConstantOfShape", "Range", "Identity", "Tile", "Expand"]


def _dyn_node(g: Gen, x: str, op: str, c: int) -> str:
    """One op on the running value ``x`` (about ``c`` channels), attributes random."""
    r = g.rng
    attrs = {a: g.attr(a) for a in OPS_ATTRS.get(op, []) if r.random() < 0.3}
    try:
        if op == "Conv":
            k = int(r.integers(1, 4))
            w = g.const(g.value((int(r.choice([1, 2, 4, 0])), c, k, k)))
            return g.node(op, [x, w], **attrs)
        if op == "BatchNormalization":
            ps = [g.const(np.abs(g.value((c,))).astype(np.float32)) for _ in range(4)]
            return g.node(op, [x, *ps], **attrs)
        if op in ("Gemm", "MatMul"):
            w = g.const(g.value((int(r.choice([1, 3, 8, 0])), int(r.choice([c, 4, 16, 1])))))
            return g.node(op, [x, w], **attrs)
        if op in ("Add", "Sub", "Mul", "Div"):
            cst = g.const(g.value(_shape(g) if r.random() < 0.4 else ()))
            ins = [x, cst] if r.random() < 0.8 else [cst, x]
            return g.node(op, ins, **attrs)
        if op == "Concat":
            return g.node(op, [x, x], **attrs)
        if op == "Reshape":
            return g.node(op, [x, g.const(np.asarray([g.small_int() for _ in range(
                r.integers(1, 5))], np.int64))], **attrs)
        if op in ("Squeeze", "Unsqueeze"):
            return g.node(op, [x, g.const(np.asarray(g.attr("axes"), np.int64))], **attrs)
        if op == "Pad":
            pads = np.asarray([int(r.choice([0, 0, 1, 2, 1 << 20])) for _ in range(8)],
                              np.int64)
            return g.node(op, [x, g.const(pads)], **attrs)
        if op == "Slice":
            ins = [g.const(np.asarray([g.small_int()], np.int64)) for _ in range(4)]
            return g.node(op, [x, *ins], **attrs)
        return g.node(op, [x], **attrs)
    except (ValueError, TypeError, OverflowError):  # a value numpy or onnx cannot encode
        return g.node("Relu", [x])


def _fold_node(g: Gen, vals: list[str], big: bool) -> str:
    r = g.rng
    op = str(r.choice(FOLD_OPS))
    a = str(r.choice(vals))
    b = str(r.choice(vals))
    attrs: dict[str, Any] = {}
    if op in ("Concat", "Gather", "Flatten"):
        attrs["axis"] = int(r.integers(-3, 4))
    if op == "Transpose" and r.random() < 0.7:
        attrs["perm"] = g.attr("perm")
    if op == "Cast":
        attrs["to"] = int(r.choice([1, 6, 7, 11, 9, 8, 16, 99]))
    if op in ("Concat",):
        return g.node(op, [a] * int(r.integers(1, 20 if big else 4)), **attrs)
    if op in ("Reshape", "Tile", "Expand", "Unsqueeze", "Squeeze"):
        shape = [g.dim(big) if r.random() < 0.7 else g.small_int()
                 for _ in range(r.integers(1, 4))]
        return g.node(op, [a, g.const(np.asarray(shape, np.int64))], **attrs)
    if op == "ConstantOfShape":
        shape = [g.dim(big) for _ in range(r.integers(1, 4))]
        dt = int(r.choice([F32, TensorProto.DOUBLE, TensorProto.INT64]))
        attrs["value"] = helper.make_tensor("v", dt, [1], [1])
        return g.node(op, [g.const(np.asarray(shape, np.int64))], **attrs)
    if op == "Range":
        lim = g.dim(big)
        ins = [g.const(np.asarray(v, np.int64)) for v in (0, lim, int(r.choice([0, 1, 3, -1])))]
        return g.node(op, ins, **attrs)
    if op == "Slice":
        ins = [g.const(np.asarray([g.small_int()], np.int64)) for _ in range(4)]
        return g.node(op, [a, *ins], **attrs)
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Gather"):
        return g.node(op, [a, b], **attrs)
    return g.node(op, [a], **attrs)


def _net(g: Gen) -> tuple[tuple[int, ...], str]:
    """A well-formed random CNN: (input shape, output name)."""
    r = g.rng
    c, h, w = int(r.choice([1, 3])), int(r.choice([8, 16, 32])), int(r.choice([8, 16, 32]))
    in_shape, x = (c, h, w), "x"
    for _ in range(int(r.integers(1, 7))):
        op = str(r.choice(["Conv", "Relu", "MaxPool", "AveragePool", "BatchNormalization",
                           "Mul", "Add", "Tanh", "LeakyRelu", "Sigmoid"]))
        if op == "Conv":
            c2 = int(r.choice([2, 8, 32, 64]))
            wt = (r.standard_normal((c2, c, 3, 3)) / (3 * c) ** 0.5).astype(np.float32)
            x, c = g.node(op, [x, g.const(wt), g.const(g.value((c2,)).astype(np.float32))],
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c2
        elif op in ("MaxPool", "AveragePool") and h >= 2 and w >= 2:
            x, h, w = g.node(op, [x], kernel_shape=[2, 2], strides=[2, 2]), h // 2, w // 2
        elif op == "BatchNormalization":
            ps = [g.const(r.standard_normal(c).astype(np.float32)) for _ in range(3)]
            var = g.const(r.uniform(0.5, 2.0, c).astype(np.float32))
            x = g.node(op, [x, *ps, var], epsilon=1e-5)
        elif op == "Mul":
            x = g.node(op, [x, g.const(r.uniform(0.5, 2, (c, 1, 1)).astype(np.float32))])
        elif op == "Add":
            x = g.node(op, [x, g.const(np.asarray(r.standard_normal(), np.float32))])
        elif op == "LeakyRelu":
            x = g.node(op, [x], alpha=float(r.uniform(0, 0.3)))
        elif op in ("Relu", "Tanh", "Sigmoid"):
            x = g.node(op, [x])
    x = g.node("Flatten", [x], axis=1)
    k = c * h * w
    x = g.node("Gemm", [x, g.const((r.standard_normal((10, k)) / k ** 0.5).astype(np.float32)),
                        g.const(np.zeros(10, np.float32))], transB=1)
    return in_shape, x


def generate(kind: str, rng: np.random.Generator, valid: bytes) -> bytes:
    """The bytes of one generated file of ``kind``."""
    if kind == "bytes":
        buf = bytearray(valid)
        if rng.random() < 0.3:
            return bytes(buf[: int(rng.integers(0, len(buf)))])
        for _ in range(int(rng.integers(1, 20))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        return bytes(buf)
    g = Gen(rng)
    opset = 13 if rng.random() < 0.8 else int(rng.choice([7, 11, 17, 21]))
    if kind == "net":
        in_shape, x = _net(g)
    elif kind == "chain" or kind == "attrs":
        img = rng.random() < 0.6
        in_shape = (int(rng.choice([1, 2, 3])), int(rng.choice([4, 6, 8])),
                    int(rng.choice([4, 6, 8]))) if img else (int(rng.choice([4, 8, 16])),)
        x, c = "x", in_shape[0]
        ops = [o for o in OPS_ATTRS if (img or o not in ("Conv", "MaxPool", "AveragePool",
                                                            "GlobalAveragePool", "LRN"))]
        for _ in range(int(rng.integers(1, 6))):
            x = _dyn_node(g, x, str(rng.choice(ops)), c)
        if rng.random() < 0.7:
            x = g.node("Flatten", [x], axis=1)
            x = g.node("Gemm", [x, g.const(g.value((3, int(rng.choice([4, 16, 48, 64])))))],
                       transB=1)
        if kind == "attrs" and g.nodes:
            victim = g.nodes[int(rng.integers(len(g.nodes)))]
            name = str(rng.choice(["axis", "alpha", "foo", "kernel_shape", "pads", "perm",
                                   "group", "epsilon", "transB", "size", "mode", "to"]))
            try:
                victim.attribute.append(helper.make_attribute(name, g.attr(name)))
            except ValueError:  # onnx cannot encode that value
                pass
    elif kind in ("fold", "bomb"):
        big = kind == "bomb"
        in_shape = (4,)
        vals = []
        for _ in range(3):  # constants of at most 2^14 elements (the file stays small)
            shape = [int(rng.choice([1, 2, 3, 4])) for _ in range(rng.integers(0, 3))]
            if big and shape:
                shape[int(rng.integers(len(shape)))] = 1 << 14
            vals.append(g.const(g.value(tuple(shape))))
        for _ in range(int(rng.integers(1, 8))):
            try:
                vals.append(_fold_node(g, vals, big))
            except (ValueError, TypeError, OverflowError):  # not encodable: draw again
                continue
        head = g.const(g.value((3, 4)))
        if rng.random() < 0.5:  # the folded constant feeds the network
            head = g.node("Add", [head, vals[-1]])
        x = g.node("Gemm", ["x", head], transB=1)
    else:  # opset
        in_shape = (4,)
        opset = int(rng.choice([0, 1, 5, 6, 26, 99, 999, 1 << 30]))
        op = str(rng.choice(["Relu", "Abs", "Erf", "Loop", "If", "Upsample", "Scan", "Foo"]))
        x = g.node(op, ["x"])
        x = g.node("Gemm", [x, g.const(g.value((3, 4)))], transB=1)
    graph = helper.make_graph(
        g.nodes, "soak", [helper.make_tensor_value_info("x", F32, ["N", *in_shape])],
        [helper.make_tensor_value_info(x, F32, None)],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in g.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _valid_file() -> bytes:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 16)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [N("Relu", ["x"], ["h"], name="relu"), N("Gemm", ["h", "w"], ["y"], transB=1)],
        "valid", [helper.make_tensor_value_info("x", F32, ["N", 16])],
        [helper.make_tensor_value_info("y", F32, ["N", 3])],
        initializer=[numpy_helper.from_array(w, name="w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]
                             ).SerializeToString()


# ------------------------------------------------------------------------------ loading
def _child(path: str, wfd: int) -> None:
    """In the forked child: load, classify the outcome, report the peak RSS, exit."""
    from boundkit.errors import ModelFileError
    from boundkit.models import load_model

    t0 = time.perf_counter()
    try:
        load_model(path)
        outcome, msg = "loaded", ""
    except ModelFileError as exc:
        text = str(exc)
        outcome = "refused" if "\n" not in text.strip() else "multi-line"
        msg = text
    except BaseException as exc:  # noqa: BLE001 - a traceback is what the soak counts
        import traceback

        outcome, msg = "traceback", "".join(traceback.format_exception(exc))[-1500:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = {"outcome": outcome, "message": msg, "peak_mib": peak,
           "seconds": time.perf_counter() - t0}
    os.write(wfd, json.dumps(doc).encode())
    os.close(wfd)
    os._exit(0)


def load_in_child(path: Path, timeout: float) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(str(path), w)
    os.close(w)
    chunks, t0 = [], time.monotonic()
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return {"outcome": "timeout", "message": f"killed after {timeout:g} s",
                    "peak_mib": float("nan"), "seconds": timeout}
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            data = os.read(r, 1 << 20)
            if not data:
                break
            chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"outcome": "crashed", "message": f"child status {status}",
                "peak_mib": float("nan"), "seconds": time.monotonic() - t0}
    return json.loads(b"".join(chunks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=330, help="files (spread over the generators)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per file")
    p.add_argument("--work", default="/tmp/boundkit-onnx-soak", help="where the files go")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "onnx_soak.md"))
    a = p.parse_args()

    import onnxruntime  # noqa: F401  (imported before forking, like torch and boundkit)
    import torch  # noqa: F401

    import boundkit.models.io  # noqa: F401
    import boundkit.models.onnx  # noqa: F401

    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    valid = _valid_file()
    rows = []
    t_start = time.perf_counter()
    for i in range(a.n):
        kind = KINDS[i % len(KINDS)]
        path = work / f"{i:04d}-{kind}.onnx"
        path.write_bytes(generate(kind, rng, valid))
        res = load_in_child(path, a.timeout)
        res.update(file=path.name, kind=kind, bytes=path.stat().st_size)
        rows.append(res)
        if res["outcome"] not in ("loaded", "refused"):
            print(f"{path.name}: {res['outcome']}: {res['message'][-300:]}", flush=True)
    total_s = time.perf_counter() - t_start
    _write(a, rows, base_peak, total_s)


def _write(a: argparse.Namespace, rows: list[dict[str, Any]], base_peak: float,
           total_s: float) -> None:
    outcomes = Counter(r["outcome"] for r in rows)
    by_kind = {k: Counter(r["outcome"] for r in rows if r["kind"] == k) for k in KINDS}
    peaks = np.asarray([r["peak_mib"] for r in rows], dtype=float)
    small = [r for r in rows if r["bytes"] < 1 << 20]
    over = [r for r in small if not r["peak_mib"] < 1024]
    bad = [r for r in rows if r["outcome"] not in ("loaded", "refused")]
    lines = [
        "# ONNX importer: hostile-input soak",
        "",
        f"`OMP_NUM_THREADS=1 python -m benchmarks.onnx_soak --n {a.n} --seed {a.seed}` "
        f"({time.strftime('%Y-%m-%d')}, {total_s:.0f} s). {len(rows)} generated files, each "
        "loaded with `boundkit.models.load_model` (onnxruntime's comparison on) in a child "
        "forked from a parent that had imported torch, onnx, onnxruntime and boundkit "
        f"(parent peak RSS {base_peak:.0f} MiB); peak = the child's `ru_maxrss`.",
        "",
        f"* outcomes: {dict(outcomes)}; **tracebacks, multi-line errors, crashes or "
        f"timeouts: {len(bad)}**",
        f"* files under 1 MB: {len(small)}; peak RSS above 1 GiB: **{len(over)}**; "
        f"largest peak {np.nanmax(peaks):.0f} MiB, median {np.nanmedian(peaks):.0f} MiB",
        f"* largest file {max(r['bytes'] for r in rows)} bytes; slowest load "
        f"{max(r['seconds'] for r in rows):.2f} s",
        "",
        "| generator | files | loaded | refused (one line) | other |",
        "|---|---|---|---|---|",
    ]
    for k in KINDS:
        c = by_kind[k]
        other = sum(v for o, v in c.items() if o not in ("loaded", "refused"))
        lines.append(f"| {k} | {sum(c.values())} | {c['loaded']} | {c['refused']} | {other} |")
    refusals = Counter()
    for r in rows:
        if r["outcome"] == "refused":
            tail = r["message"].split("): ", 1)[-1] if "): " in r["message"] else \
                r["message"].split(": ", 1)[-1]
            refusals[" ".join(tail.split()[:5])] += 1
    lines += ["", "Most frequent refusals (first words of the reason):", ""]
    lines += [f"* {n} x {why}" for why, n in refusals.most_common(15)]
    lines += ["", "## Every file", "", "| file | bytes | outcome | peak MiB | s | message |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|").replace("\n", " ")
        msg = msg.split(".onnx: ", 1)[-1][:110]
        lines.append(f"| {r['file']} | {r['bytes']} | {r['outcome']} | {r['peak_mib']:.0f} | "
                     f"{r['seconds']:.2f} | {msg} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
