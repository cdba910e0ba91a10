"""The VNN-COMP 2023 vision transformer ``pgd_2_3_16.onnx`` (``../shared/networks``,
provenance in its README) through boundkit's native ONNX importer: agreement with
onnxruntime on CIFAR-10 test images, accuracy, and (where every node kind has a ``crown``
rule) ``crown`` radii against the ``best`` attack with the count of violations.

    python -m analyses.vit_pgd --n 100 --n-cert 10 [--out docs/results/vit_pgd.md]

The network's properties are stated on ``(x - mean) / std`` (its README); the normalisation
is prepended to the imported model, and onnxruntime is fed the normalised images. A
violation is an image whose certified radius exceeds the norm of an adversarial example
found by the attack: it must be 0. Besides the medians, the per-image minimum of
crown / attack (and the image it is on); with ``--out``, every certified image's numbers
(test index, label, crown radius, attack norm, ratio) go to the same name with ``.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
from boundkit.data import load_dataset
from boundkit.encoding import dumps
from boundkit.errors import BoundkitError
from boundkit.models import load_onnx

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100, help="test images compared with onnxruntime")
    ap.add_argument("--n-cert", type=int, default=10, help="correct images certified")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--budget", type=int, default=100, help="attack budget")
    ap.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # the networks folder: $BOUNDKIT_NETWORKS, else beside the data folder
    networks = Path(os.environ.get("BOUNDKIT_NETWORKS", Path(args.data_root).parent /
                                   "networks"))
    path = networks / "pgd_2_3_16.onnx"
    lines = [f"`python -m analyses.vit_pgd --n {args.n} --n-cert {args.n_cert} --budget "
             f"{args.budget}` (one CPU thread, torch {torch.__version__}).", ""]

    t0 = time.perf_counter()
    model = load_onnx(path, input_shape=(3, 32, 32), normalize=(MEAN, STD)).eval()
    t_import = time.perf_counter() - t0
    x_all, y_all = load_dataset("cifar10", args.data_root, "test", download=False)
    x, y = x_all[: args.n].float(), y_all[: args.n]

    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xn = ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: xn[i:i + 50].numpy()})[0]
                          for i in range(0, args.n, 50)])
    with torch.no_grad():
        got = model(x).double().numpy()
    abs_err = float(np.abs(got - ref).max())
    rel_err = abs_err / float(np.abs(ref).max())
    acc = float((torch.from_numpy(got).argmax(1) == y).double().mean())
    same = float((got.argmax(1) == ref.argmax(1)).mean())
    print(f"import {t_import:.2f} s; {args.n} images: max |boundkit - onnxruntime| = "
          f"{abs_err:.3g} (relative {rel_err:.3g}); same argmax {same:.3f}; accuracy {acc:.3f}",
          flush=True)
    graph = bk.capture(model, x[:1])
    kinds = sorted({n.op for n in graph})
    lines += ["| images | max abs. error vs onnxruntime | relative | same argmax | accuracy | "
              "import s |", "|---|---|---|---|---|---|",
              f"| {args.n} | {abs_err:.3g} | {rel_err:.3g} | {same:.3f} | {acc:.3f} | "
              f"{t_import:.2f} |", "", f"Captured node kinds: {', '.join(kinds)}.", ""]

    correct = torch.nonzero(torch.from_numpy(got).argmax(1) == y).flatten()[: args.n_cert]
    xc = x[correct]
    try:
        t0 = time.perf_counter()
        cert = bk.certify(model, xc, "crown", box=(0.0, 1.0), graph=graph)
        t_crown = (time.perf_counter() - t0) / len(xc)
    except BoundkitError as exc:
        msg = str(exc).splitlines()[0]
        print(f"crown refused: {msg}", flush=True)
        lines += [f"`crown` on the first {len(xc)} correct images: refused ({msg})."]
    else:
        t0 = time.perf_counter()
        adv = bk.attack(model, xc, "best", budget=args.budget, box=(0.0, 1.0))
        t_att = (time.perf_counter() - t0) / len(xc)
        norm = torch.where(adv.success, adv.norm.double(), torch.full_like(
            adv.norm.double(), float("inf")))
        radius = cert.radius.double().cpu()
        norm = norm.cpu()
        viol = int((radius > norm * (1 + 1e-9)).sum())
        ratio = radius / norm
        worst = int(ratio.argmin())
        per_image = [{"index": int(correct[i]), "label": int(y[correct[i]]),
                      "crown": float(radius[i]), "attack": float(norm[i]),
                      "ratio": float(ratio[i])} for i in range(len(xc))]
        print(f"crown median {float(radius.median()):.4g}, attack median "
              f"{float(norm.median()):.4g}, min crown/attack {float(ratio[worst]):.4g} (image "
              f"{int(correct[worst])}), violations {viol}, crown {t_crown:.2f} s/img, "
              f"attack {t_att:.2f} s/img", flush=True)
        lines += ["| images | crown median | attack median | median ratio | min ratio (image) "
                  "| violations | crown s/img | attack s/img |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {len(xc)} | {float(radius.median()):.4g} | {float(norm.median()):.4g} | "
                  f"{float(ratio.median()):.3f} | {float(ratio[worst]):.3f} "
                  f"({int(correct[worst])}) | {viol} | {t_crown:.2f} | {t_att:.2f} |"]
        if args.out is not None:
            lines += ["", f"Every image: `{args.out.with_suffix('.json')}`."]
            args.out.with_suffix(".json").write_text(dumps(
                {"n_cert": len(xc), "violations": viol, "crown_median": float(radius.median()),
                 "attack_median": float(norm.median()), "ratio_median": float(ratio.median()),
                 "ratio_min": float(ratio[worst]), "ratio_min_index": int(correct[worst]),
                 "images": per_image}, indent=1) + "\n")
    if args.out is not None:
        args.out.write_text("# pgd_2_3_16.onnx (VNN-COMP 2023 ViT) through the native "
                            "importer\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
