"""What the capture checks of issue 10 cost: fingerprinting and the fidelity check, against
the ``sound`` pass and a forward pass, on LeNet-5 over 10k MNIST-shaped samples (one run,
ratios of times measured side by side; best of ``--repeats``).

    OMP_NUM_THREADS=1 python -m benchmarks.fidelity_cost --n 10000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import boundkit as bk
from boundkit.graph.fidelity import check_fidelity
from boundkit.graph.fingerprint import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "fidelity_cost.md"))
    a = p.parse_args()
    torch.manual_seed(0)
    model = bk.models.build_model("lenet5").eval()
    x = torch.rand(a.n, 1, 28, 28)
    graph = bk.capture(model, x)
    bs = a.batch_size
    chunks = [x[s : s + bs] for s in range(0, a.n, bs)]

    def forward32() -> None:
        with torch.no_grad():
            for c in chunks:
                model(c)

    def forward64() -> None:
        for c in chunks:
            graph.activations(c, ())

    outs = [graph.activations(c, ())[graph.output] for c in chunks]

    def fidelity() -> None:
        for c, o in zip(chunks, outs):
            check_fidelity(model, graph, c, o)

    def certify() -> None:
        bk.certify(model, x, "sound", batch_size=bs, trace=False)

    t = {
        "forward pass, model dtype (float32)": best(forward32, a.repeats),
        "forward pass, float64 graph": best(forward64, a.repeats),
        "fingerprint": best(lambda: model_fingerprint(model), a.repeats),
        "fidelity check": best(fidelity, a.repeats),
        "certify sound (all included)": best(certify, a.repeats),
    }
    checks = t["fingerprint"] + t["fidelity check"]
    sound_pass = t["certify sound (all included)"] - checks
    total = t["certify sound (all included)"]
    lines = [
        "# Cost of the capture checks (issue 10)", "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.fidelity_cost --n {a.n} --repeats "
        f"{a.repeats}` (LeNet-5 of the zoo, {a.n} samples, batch {bs}, "
        f"{torch.get_num_threads()} thread(s)); best of {a.repeats} per row, same run.", "",
        "| what | seconds |", "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in t.items()], "",
        f"- fingerprint + fidelity check / rest of the `sound` pass: **{checks / sound_pass:.3f}**",
        f"- `certify(sound)` / float64 forward pass: "
        f"**{total / t['forward pass, float64 graph']:.2f}**",
        f"- `certify(sound)` / float32 forward pass: "
        f"{total / t['forward pass, model dtype (float32)']:.2f}",
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
