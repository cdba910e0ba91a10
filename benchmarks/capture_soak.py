"""Soak of capture fidelity (issue 10): random compositions of supported calls, in every
calling form, each either refused with a clear error or certified soundly.

For every model drawn by :func:`boundkit.testing.composed_networks` (hypothesis, fixed
seed): certify three random inputs with each method; a refusal must be an
``UnsupportedLayerError``; a certificate must have no adversarial example inside its ball
(:func:`boundkit.testing.adversarial_search` in float64) and the captured graph must compute
the model's function on the inputs. Writes ``docs/results/capture_soak.md``.

    OMP_NUM_THREADS=1 python -m benchmarks.capture_soak --n 5000 --methods sound,crown
"""

from __future__ import annotations

import argparse
import collections
import copy
import time
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.testing import adversarial_search, composed_networks

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="random compositions")
    p.add_argument("--methods", default="sound,crown")
    p.add_argument("--steps", type=int, default=40, help="adversarial search steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "capture_soak.md"))
    a = p.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    torch.set_num_threads(1)
    counts: collections.Counter[str] = collections.Counter()
    refusals: collections.Counter[str] = collections.Counter()
    violations: list[str] = []
    mismatches: list[str] = []
    t0 = time.time()

    @seed(a.seed)
    @settings(max_examples=a.n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(composed_networks(), st.integers(0, 2**31 - 1))
    def soak(model: torch.nn.Module, s: int) -> None:
        x = torch.rand((3, 2, 6, 6), generator=torch.Generator().manual_seed(s))
        counts["models"] += 1
        upper = None
        for m in methods:
            try:
                opts = {"box": None} if "box" in bk.bounds.method.get_method(m).options() else {}
                cert = bk.certify(model, x, m, **opts)  # the search is unboxed: so is the ball
            except UnsupportedLayerError as exc:
                counts[f"refused {m}"] += 1
                refusals[str(exc).split(": ", 1)[-1][:90]] += 1
                continue
            counts[f"certified {m}"] += 1
            if upper is None:
                _, upper = adversarial_search(model, x, steps=a.steps)
                graph = bk.capture(model, x)
                with torch.no_grad():
                    want = copy.deepcopy(model).double()(x.double())
                got = graph.activations(x)[graph.output]
                if not torch.allclose(got, want, rtol=1e-9, atol=1e-12):
                    mismatches.append(repr(model.steps))
            bad = cert.radius > upper
            if bool(bad.any()):
                violations.append(f"{m}: {model.steps} radius {cert.radius.tolist()} > "
                                  f"{upper.tolist()}")
                print("VIOLATION", violations[-1], flush=True)
        if counts["models"] % 250 == 0:
            print(f"{counts['models']} models, {time.time() - t0:.0f} s, "
                  f"{len(violations)} violations", flush=True)

    soak()
    lines = [
        "# Capture soak (issue 10)", "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.capture_soak --n {a.n} --methods "
        f"{a.methods} --steps {a.steps} --seed {a.seed}` ({time.time() - t0:.0f} s).", "",
        "| what | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(counts.items())],
        f"| **violations** (certified radius > float64 adversarial example) | "
        f"**{len(violations)}** |",
        f"| graph != model on the certified inputs | {len(mismatches)} |", "",
        "Most common refusals:", "",
        *[f"- {v} x `{k}`" for k, v in refusals.most_common(10)], "",
    ]
    if violations:
        lines += ["Violations:", "", *[f"- `{v}`" for v in violations[:20]], ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
