"""Soak test of ``crown``: random networks and inputs, every certificate checked.

Property 1 (``exact``): on random small ReLU MLPs, ``crown`` (box [0, 1] and no box) <= the
exact radius (``bk.exact_radius`` with the same box). Property 2 (``adversarial``): on random
networks with pooling, batch norm, LRN, smooth activations (``boundkit.testing``), no
adversarial example found by the float64 search inside the certified ball (box [0, 1]).
Property 3 (``order``): ``crown`` >= ``sound`` per sample. Prints the counts and every
violation; exits 1 on any.

    python -m analyses.crown_soak --examples 10000 [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import boundkit as bk
from boundkit.testing import adversarial_search, random_network

KINDS = [("linear", "relu"), ("conv2d", "relu", "maxpool2d"), ("conv2d", "tanh", "avgpool2d"),
         ("conv2d", "batchnorm", "sigmoid"), ("conv2d", "lrn", "relu"), ("linear", "softplus"),
         ("linear", "tanh"), ("linear", "sigmoid")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--per-net", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = {"exact": 0, "adversarial": 0, "order": 0}
    bad: list[str] = []
    t0, net = time.time(), 0
    while counts["adversarial"] < args.examples:
        seed = args.seed * 1_000_003 + net
        kinds = KINDS[net % len(KINDS)]
        scale = [0.5, 1.0, 2.0, 4.0][(net // len(KINDS)) % 4]
        model = random_network(seed, layer_kinds=kinds, depth=2, width=8, scales=[scale])
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand((args.per_net, *model.boundkit_input_shape), generator=gen)
        crown = bk.certify(model, x, "crown").radius
        sound = bk.certify(model, x, "sound").radius
        counts["order"] += len(x)
        bad += [f"net {seed} sample {i}: crown {crown[i]} < sound {sound[i]}"
                for i in torch.nonzero(crown < sound).flatten().tolist()]
        _, norm = adversarial_search(model, x, steps=50, box=(0.0, 1.0), seed=seed)
        counts["adversarial"] += len(x)
        bad += [f"net {seed} {kinds} sample {i}: crown {crown[i]} > adversarial {norm[i]}"
                for i in torch.nonzero(crown > norm * (1 + 1e-9)).flatten().tolist()]
        if kinds == ("linear", "relu"):
            for box in (None, (0.0, 1.0)):
                r = bk.certify(model, x, "crown", box=box).radius
                ex = bk.exact_radius(model, x, box=box, time_limit=10, on_budget="nan")
                done = ~torch.isnan(ex)
                counts["exact"] += int(done.sum())
                bad += [f"net {seed} box {box} sample {i}: crown {r[i]} > exact {ex[i]}"
                        for i in torch.nonzero(done & (r > ex * (1 + 1e-9))).flatten().tolist()]
        net += 1
        if net % 50 == 0:
            print(f"{net} nets, {counts}, {len(bad)} violations, {time.time() - t0:.0f} s",
                  flush=True)
    print(f"done: {net} nets, checked {counts}, violations {len(bad)}, {time.time() - t0:.0f} s")
    for b in bad:
        print("VIOLATION", b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
