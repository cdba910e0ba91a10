"""Soak of the linear-relaxation certificates ``crown`` and ``alpha`` (issue 11, part 5).

Properties, each on random networks drawn by hypothesis (fixed seed, no shrinking):

* ``exact``: ``crown`` and ``alpha`` <= :func:`boundkit.exact_radius` (box [0, 1] or none,
  drawn) on small ReLU MLPs (:func:`boundkit.testing.small_relu_mlps`) and small ReLU conv
  nets (:func:`boundkit.testing.small_relu_convnets`: strided / padded Conv2d, AvgPool2d,
  eval BatchNorm2d).
* ``adversarial``: no float64 adversarial example (:func:`boundkit.testing.adversarial_search`,
  box [0, 1]) inside the ``crown`` or ``alpha`` ball, on networks with max / average
  pooling, batch norm, LRN, smooth activations (:func:`boundkit.testing.small_networks`)
  and residual, ``cat``, LeakyReLU compositions (:func:`boundkit.testing.composed_networks`).
* ``order``: ``alpha >= crown >= sound`` per sample, checked on every sample of the two
  properties above (their radii are computed anyway).

An example is one (network, input) pair; each network is certified on ``--per-net`` inputs
at once. Every violation prints the model (repr, parameters) and the inputs. Writes
``docs/results/relaxation_soak.md`` (rewritten every ``--report-every`` networks, so an
interrupted run leaves its counts); exits 1 on any violation.

    OMP_NUM_THREADS=1 python -m benchmarks.relaxation_soak --examples 10000
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from boundkit.testing import (
    check_no_adversarial_in_relaxation_ball,
    check_relaxation_below_exact,
    check_relaxation_order,
    composed_networks,
    small_networks,
    small_relu_convnets,
    small_relu_mlps,
    unstable_neurons,
)

ROOT = Path(__file__).resolve().parents[1]

PROPERTIES = ("exact", "adversarial", "order")


class Tally:
    """Per-property counts: networks, samples, violations, samples with a positive radius
    and with unstable neurons in the ``crown`` ball, exact searches left unknown, refusals,
    wall time."""

    def __init__(self) -> None:
        self.c: dict[str, collections.Counter[str]] = {p: collections.Counter()
                                                        for p in PROPERTIES}
        self.seconds: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []

    def add(self, prop: str, radii: dict[str, Any], unstable: torch.Tensor) -> None:
        """Count one network's samples for ``prop`` (and for ``order``)."""
        n = int(radii["crown"].numel())
        for p in (prop, "order"):
            c = self.c[p]
            c["networks"] += 1
            c["samples"] += n
            c["crown > 0"] += int((radii["crown"] > 0).sum())
            c["alpha > crown"] += int((radii["alpha"] > radii["crown"] * (1 + 1e-9)).sum())
            c["unstable in ball"] += int((unstable > 0).sum())
            c["unstable neurons"] += int(unstable.sum())


def _sample_inputs(model: torch.nn.Module, n: int, s: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(s)
    return torch.rand((n, *model.boundkit_input_shape), generator=gen)


def _report(a: argparse.Namespace, t: Tally, wall: float, done: bool) -> str:
    cmd = ("OMP_NUM_THREADS=1 python -m benchmarks.relaxation_soak "
           f"--examples {a.examples} --per-net {a.per_net} --alpha-iterations "
           f"{a.alpha_iterations} --steps {a.steps} --seed {a.seed} --slice {a.slice}"
           + (f" --max-minutes {a.max_minutes:g}" if a.max_minutes is not None else ""))
    rows = []
    for p in PROPERTIES:
        c = t.c[p]
        s = max(c["samples"], 1)
        rows.append(
            f"| `{p}` | {c['networks']} | {c['samples']} | **{c['violations']}** | "
            f"{c['unknown']} | {100 * c['crown > 0'] / s:.1f}% | "
            f"{100 * c['unstable in ball'] / s:.1f}% | {c['unstable neurons'] / s:.2f} | "
            f"{100 * c['alpha > crown'] / s:.1f}% | {c['refused']} | {t.seconds[p]:.0f} |")
    status = "finished" if done else "INTERRUPTED / in progress: counts so far"
    lines = [
        "# Relaxation soak: `crown`, `alpha` (issue 11, part 5)", "",
        f"Command: `{cmd}`", "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; torch "
        f"{torch.__version__}; Python {platform.python_version()}; one thread; wall time "
        f"{wall:.0f} s ({wall / 60:.1f} min); status: {status}.", "",
        "An example is one (network, input) pair; each network is certified on "
        f"{a.per_net} random inputs in [0, 1]^d at once. `alpha` runs "
        f"{a.alpha_iterations} slope iterations; the adversarial search {a.steps} steps.",
        "",
        "| property | networks | examples | violations | exact unknown (time limit) | "
        "crown > 0 | unstable ReLUs in the crown ball | unstable ReLUs / example | "
        "alpha > crown | refused by capture | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "- `exact`: `crown`, `alpha` <= `bk.exact_radius` (same box: [0, 1] or none, drawn "
        "per network) on small ReLU MLPs and small ReLU conv nets (strided / padded Conv2d, "
        "AvgPool2d, eval BatchNorm2d; inputs 1x5x5 or 2x4x4). A sample whose exact search "
        f"ran past {a.exact_time_limit} s is unknown (not compared) and counted.",
        "- `adversarial`: no float64 adversarial example (box [0, 1]) inside the `crown` or "
        "`alpha` ball, on `small_networks` (max / average pooling, batch norm, LRN, tanh, "
        "sigmoid, softplus, ReLU) and `composed_networks` (residual, `cat`, LeakyReLU, "
        "pooling, batch norm, smooth activations in every calling form). A network that "
        "capture refuses is counted under *refused* and not as an example.",
        "- `order`: `alpha >= crown >= sound` per sample, on every sample of the two "
        "properties above (examples = the sum of theirs).",
        "- *unstable ReLUs in the crown ball*: the fraction of examples with at least one "
        "ReLU / LeakyReLU whose crown input interval over the certified ball straddles 0 "
        "(the relaxation had to approximate it).", "",
        "Network kinds drawn: " + ", ".join(f"{k} {v}" for k, v in sorted(t.kinds.items())),
        "",
    ]
    if t.violations:
        lines += ["## Violations", "", *[f"```\n{v}\n```" for v in t.violations[:20]], ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=10_000, help="examples per property")
    p.add_argument("--per-net", type=int, default=4, help="inputs per network")
    p.add_argument("--alpha-iterations", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="adversarial search steps")
    p.add_argument("--exact-time-limit", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (and say so in the report) after this wall time")
    p.add_argument("--report-every", type=int, default=100, help="networks")
    p.add_argument("--slice", type=int, default=100, help="networks per turn of a property")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "relaxation_soak.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    t = Tally()
    t0 = time.time()
    out = Path(a.out)
    stop = [False]

    def over_time() -> bool:
        stop[0] = stop[0] or (a.max_minutes is not None
                              and time.time() - t0 > 60 * a.max_minutes)
        return stop[0]

    def violation(prop: str, exc: AssertionError) -> None:
        t.c[prop]["violations"] += 1
        text = f"[{prop}] {exc}"
        t.violations.append(text)
        print("VIOLATION", text, flush=True)
        traceback.print_exc()

    def progress() -> None:
        nets = sum(t.c[q]["networks"] for q in ("exact", "adversarial"))
        if nets % a.report_every == 0:
            out.write_text(_report(a, t, time.time() - t0, False))
            print(f"{time.time() - t0:.0f} s: " + ", ".join(
                f"{q} {t.c[q]['samples']} ({t.c[q]['violations']} violations)"
                for q in PROPERTIES), flush=True)

    def budget(nets: int) -> settings:
        return settings(max_examples=nets, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck), phases=[Phase.generate])

    exact_nets = st.one_of(small_relu_mlps(max_hidden=6), small_relu_convnets(max_relus=12))

    def exact(model: torch.nn.Module, box: tuple[float, float] | None, s: int) -> None:
        if t.c["exact"]["samples"] >= a.examples or over_time():
            return
        x = _sample_inputs(model, a.per_net, s)
        start = time.time()
        t.kinds["conv (exact)" if len(model.boundkit_input_shape) == 3 else "mlp (exact)"] += 1
        try:
            r = check_relaxation_below_exact(model, x, box, alpha_iterations=a.alpha_iterations,
                                             time_limit=a.exact_time_limit)
        except AssertionError as exc:
            violation("exact", exc)
            return
        try:
            check_relaxation_order(model, x, radii=r)
        except AssertionError as exc:
            violation("order", exc)
        t.add("exact", r, unstable_neurons(model, x, r["crown"], box))
        t.c["exact"]["unknown"] += r["unknown"]
        t.seconds["exact"] += time.time() - start
        progress()

    adv_nets = st.one_of(small_networks(max_depth=2, max_width=8), composed_networks(5))

    def adversarial(model: torch.nn.Module, s: int) -> None:
        if t.c["adversarial"]["samples"] >= a.examples or over_time():
            return
        x = _sample_inputs(model, a.per_net, s)
        start = time.time()
        try:
            r = check_no_adversarial_in_relaxation_ball(
                model, x, alpha_iterations=a.alpha_iterations, steps=a.steps, seed=s)
        except AssertionError as exc:
            violation("adversarial", exc)
            return
        if r is None:
            t.c["adversarial"]["refused"] += 1
            t.seconds["adversarial"] += time.time() - start
            return
        t.kinds[type(model).__name__] += 1
        try:
            check_relaxation_order(model, x, radii=r)
        except AssertionError as exc:
            violation("order", exc)
        t.add("adversarial", r, unstable_neurons(model, x, r["crown"]))
        t.seconds["adversarial"] += time.time() - start
        progress()

    # the properties take turns, --slice networks at a time (so that a run cut short by
    # --max-minutes has counts for both); each slice draws the networks still missing
    # (refusals do not count) from its own seed
    runs = {"exact": given(exact_nets, st.sampled_from([None, (0.0, 1.0)]),
                           st.integers(0, 2**31 - 1)),
            "adversarial": given(adv_nets, st.integers(0, 2**31 - 1))}
    bodies = {"exact": exact, "adversarial": adversarial}
    k = 0
    while not over_time():
        todo = [q for q in runs if t.c[q]["samples"] < a.examples]
        if not todo:
            break
        for offset, prop in enumerate(runs):
            if prop not in todo or over_time():
                continue
            missing = -(-(a.examples - t.c[prop]["samples"]) // a.per_net)
            seed(a.seed * 1_000_003 + 100_000 * offset + k)(
                budget(min(missing, a.slice))(runs[prop](bodies[prop])))()
        k += 1
    t.seconds["order"] = t.seconds["exact"] + t.seconds["adversarial"]
    wall = time.time() - t0
    report = _report(a, t, wall, not stop[0])
    out.write_text(report)
    print(report)
    sys.exit(1 if t.violations else 0)


if __name__ == "__main__":
    main()
