"""Soak of issue 24's operators: ``crown`` and ``sound`` on random compositions
(``tests/bounds/issue24_soak.py``: conv, ConvTranspose2d, Upsample, pooling of every kind,
batch norm, LayerNorm, GroupSort / MaxMin, residual additions, ``cat``, ten activations,
module and functional forms; with ``--tokens``, token networks: patch or row embeddings,
class token, self-attention written out and ``nn.MultiheadAttention``, gated units,
products, LayerNorm and MLPs on tokens), each certified on 3 inputs and attacked by dense
random points in every ball and a float64 adversarial search. Writes
``docs/results/issue24_soak.md`` (rewritten every ``--report-every`` networks, so an
interrupted run leaves its counts); exits 1 on any violation.

    OMP_NUM_THREADS=1 python -m benchmarks.issue24_soak --nets 5000
    OMP_NUM_THREADS=1 python -m benchmarks.issue24_soak --tokens --nets 5000
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks._models import REPO

sys.path.insert(0, str(REPO / "tests" / "bounds"))
from issue24_soak import ACTS, check_case, make_net  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", type=int, default=5000)
    ap.add_argument("--first-seed", type=int, default=None,
                    help="default 10000 (20000 with --tokens, as the slow tests)")
    ap.add_argument("--points", type=int, default=400, help="random points per ball")
    ap.add_argument("--search-steps", type=int, default=15,
                    help="steps of the float64 adversarial search per network (0: none)")
    ap.add_argument("--report-every", type=int, default=250)
    ap.add_argument("--tokens", action="store_true",
                    help="token networks instead (products, softmax, attention, gating)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default docs/results/issue24_soak.md (issue24_soak_tokens.md with "
                         "--tokens)")
    args = ap.parse_args()
    if args.first_seed is None:
        args.first_seed = 20_000 if args.tokens else 10_000
    if args.out is None:
        args.out = REPO / "docs" / "results" / (
            "issue24_soak_tokens.md" if args.tokens else "issue24_soak.md")
    torch.set_num_threads(1)
    cmd = " ".join(["python -m benchmarks.issue24_soak", *sys.argv[1:]])
    kinds: collections.Counter[str] = collections.Counter()
    acts: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    done = points = certified = 0
    ratio: list[float] = []
    t0 = time.process_time()

    def report(final: bool) -> None:
        cpu = time.process_time() - t0
        med = float(torch.tensor(ratio).median()) if ratio else float("nan")
        lines = [
            "# Issue 24 soak: crown and sound on random compositions of the new operators"
            + (" (token networks: products, softmax, attention)" if args.tokens else ""), "",
            f"`{cmd}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, one thread"
            f"{'' if final else ', interrupted or in progress'}).", "",
            f"- networks: {done} (seeds {args.first_seed}..{args.first_seed + done - 1}), "
            f"3 inputs each; {certified} balls with a positive radius",
            f"- random points checked inside certified balls: {points:,}",
            f"- violations (a point inside a ball with another class, or an adversarial "
            f"example closer than a radius): **{len(failures)}**",
            f"- `sound` refused (no rule): {refused['sound']} networks; `crown` refused: "
            f"{refused['crown']}",
            f"- median crown radius / closest adversarial distance found: {med:.3f}"
            + (" (no search in this run: random points only)" if args.search_steps <= 0
               else f" (search of {args.search_steps} steps)"),
            f"- CPU time {cpu:.0f} s ({cpu / max(done, 1):.2f} s per network)", "",
            ("Blocks drawn: " if args.tokens else "Steps drawn (image and vector stages): ")
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ".", "",
            "Activations drawn: " + ", ".join(f"{k} {v}" for k, v in sorted(acts.items()))
            + ".", "",
        ]
        if failures:
            lines += ["Failures:", "", *[f"- {f}" for f in failures[:20]], ""]
        args.out.write_text("\n".join(lines))

    for seed in range(args.first_seed, args.first_seed + args.nets):
        steps = make_net(seed, args.tokens).steps
        try:
            res = check_case(seed, points=args.points, search_steps=args.search_steps,
                             tokens=args.tokens)
        except AssertionError as exc:
            failures.append(str(exc)[:600].replace("\n", " "))
            print("VIOLATION", failures[-1], flush=True)
        except Exception as exc:  # noqa: BLE001 - any crash is a finding, kept and reported
            failures.append(f"seed {seed}: {type(exc).__name__}: {exc}"[:600])
            traceback.print_exc()
        else:
            points += res.points * sum(r is not None for r in res.radii.values())
            crown = res.radii["crown"]
            assert crown is not None
            pos = crown > 0
            certified += int(pos.sum())
            fin = pos & torch.isfinite(res.adversarial) & torch.isfinite(crown)
            ratio += (crown[fin] / res.adversarial[fin]).tolist()
            refused.update(k for k, r in res.radii.items() if r is None)
        kinds.update(st.kind for st in steps)
        acts.update(st.arg for st in steps if st.arg in ACTS)
        done += 1
        if done % args.report_every == 0:
            report(False)
            print(f"{done} networks, {len(failures)} failures", flush=True)
    report(True)
    print(args.out.read_text())
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
