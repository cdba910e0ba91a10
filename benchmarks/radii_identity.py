"""Bit-for-bit fingerprint of the linear-relaxation radii, to check that a refactor of the
engine changes no result.

On every zoo architecture (seed 0, three seeded random inputs in [0, 1]), the residual and
concatenating graphs of the regression fixture, and the MLP and CIFAR conv net of
``../shared/networks`` (when that folder is there; three seeded random inputs each, the CIFAR
net with its normalisation prepended), it certifies with ``sound``, ``crown`` (with and without
the box) and ``alpha`` (3 iterations, on the models with at most 2,000 hidden neurons) and
stores every radius as ``float.hex`` (exact). ``--check FILE`` recomputes and reports every
radius that differs in any bit::

    python -m benchmarks.radii_identity --out /tmp/radii.json     # before the change
    python -m benchmarks.radii_identity --check /tmp/radii.json   # after: exit 1 on a change
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import boundkit as bk
from boundkit.models.zoo import ZOO, build_model

REPO = Path(__file__).resolve().parents[1]
NETWORKS = REPO.parent / "shared" / "networks"
#: alpha runs where the hidden layers hold at most this many neurons (its time grows fast)
ALPHA_NEURONS = 2000
#: crown and alpha run where they take minutes, not hours, on one core (the CIFAR
#: network-in-network's walks cover ten 32x32 maps: sound only there)
CROWN_SKIP = ("cifar_nin_small", "cifar_nin_small_bn")


def _cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    out: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    for name, entry in ZOO.items():
        gen = torch.Generator().manual_seed(1)
        out[name] = (build_model(name, seed=0),
                     torch.rand((3, *entry.input_shape), generator=gen))
    from tests.bounds.regression.radii_models import Cat, Residual
    for cls in (Residual, Cat):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls().eval()
        out[cls.__name__.lower()] = (model, torch.rand((3, 6),
                                                       generator=torch.Generator().manual_seed(1)))
    if NETWORKS.is_dir():
        from boundkit.models import load_onnx
        gen = torch.Generator().manual_seed(2)
        out["mnist-net_256x2"] = (
            load_onnx(NETWORKS / "mnist-net_256x2.onnx", check=False, input_shape=(1, 28, 28)),
            torch.rand((3, 1, 28, 28), generator=gen))
        out["cifar_base_kw"] = (
            load_onnx(NETWORKS / "cifar_base_kw.onnx", check=False, input_shape=(3, 32, 32),
                      normalize=((0.485, 0.456, 0.406), (0.225, 0.225, 0.225))),
            torch.rand((3, 3, 32, 32), generator=gen))
    return out


def _hidden(model: torch.nn.Module, x: torch.Tensor) -> int:
    count = 0

    def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        nonlocal count
        count += out[0].numel()
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, torch.nn.ReLU | torch.nn.Tanh | torch.nn.LeakyReLU)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hs:
            h.remove()
    return count


def fingerprint(only: set[str] | None = None) -> dict[str, dict[str, list[str] | None]]:
    data: dict[str, dict[str, list[str] | None]] = {}
    for name, (model, x) in _cases().items():
        if only is not None and name not in only:
            continue
        runs: dict[str, tuple[str, dict]] = {"sound": ("sound", {})}
        if name not in CROWN_SKIP:
            runs.update({"crown": ("crown", {}), "crown-nobox": ("crown", {"box": None})})
        if name not in CROWN_SKIP and _hidden(model, x) <= ALPHA_NEURONS:
            runs["alpha"] = ("alpha", {"iterations": 3})
        data[name] = {}
        for key, (method, opts) in runs.items():
            try:
                r = bk.certify(model, x, method, **opts).radius.tolist()
            except bk.UnsupportedLayerError:
                data[name][key] = None
                continue
            data[name][key] = [float(v).hex() if math.isfinite(v) else repr(v) for v in r]
        print(name, {k: v for k, v in data[name].items()}, flush=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write the fingerprint here")
    g.add_argument("--check", type=Path, help="compare with this fingerprint, bit for bit")
    ap.add_argument("--cases", nargs="*", help="only these cases (--out adds them to the file)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = fingerprint(set(args.cases) if args.cases else None)
    if args.out is not None:
        old = json.loads(args.out.read_text()) if args.cases and args.out.exists() else {}
        args.out.write_text(json.dumps({**old, **data}, indent=1) + "\n")
        return
    want = json.loads(args.check.read_text())
    diffs = [f"{name} {key}: {want[name].get(key)} -> {got}"
             for name, runs in data.items() if name in want
             for key, got in runs.items() if want[name].get(key) != got]
    missing = sorted(set(want) - set(data)) if not args.cases else []
    for d in diffs:
        print("DIFFERS", d)
    print(f"{sum(len(r) for r in data.values())} runs compared; {len(diffs)} differ; "
          f"missing cases: {missing or 'none'}")
    sys.exit(1 if diffs or missing else 0)


if __name__ == "__main__":
    main()
