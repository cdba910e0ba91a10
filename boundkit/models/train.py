"""Seeded training of zoo models with Adam, as in Peck (2017).

The thesis states the optimiser (Adam, Kingma & Ba 2014) for the LeNet experiments (§5.4.1,
"10,000 iterations"); it gives no learning rate, batch size or epoch count for the MLPs of
§4.3, nor for any network. Where it is silent we use Adam's default learning rate 1e-3 and
the per-architecture defaults in :data:`boundkit.models.zoo.ZOO` (see
``docs/models_and_data.md``).

Run as ``python -m boundkit.models.train NAME --data-root ../shared/data --out runs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from boundkit.models.zoo import ZOO, build_model

Regularizer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    chunks = list(torch.split(perm, batch_size))
    # A final batch of one sample breaks BatchNorm in training mode: merge it.
    if len(chunks) > 1 and chunks[-1].numel() == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    regularizer: Regularizer | None = None,
    verbose: bool = False,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with Adam and cross-entropy; return it in eval mode.

    Deterministic for a given ``seed`` (on CPU): the mini-batch order comes from a private
    ``torch.Generator`` and dropout draws from the global RNG, which is seeded inside a
    ``fork_rng`` block so that the caller's RNG state is left untouched. ``regularizer``
    (optional) is ``callable(model, x_batch, logits) -> scalar`` added to the loss (e.g. the
    output-margin penalty of §4.4; return the negated bonus to maximise a margin).
    """
    from boundkit.validate import check_device

    device = check_device(device)  # a clear DeviceError for cuda without CUDA
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    dev = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    model.to(dev)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = x.to(dev, dtype)
    y = y.to(dev, torch.int64)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            total, count = 0.0, 0
            for idx in _batches(x.shape[0], batch_size, gen):
                idx = idx.to(dev)
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                loss = loss_fn(logits, yb)
                if regularizer is not None:
                    loss = loss + regularizer(model, xb, logits)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} in epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * xb.shape[0]
                count += xb.shape[0]
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (evaluated in eval mode)."""
    if x.shape[0] == 0:
        return math.nan
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(dev, dtype)
            correct += int((model(xb).argmax(1).cpu() == y[i : i + batch_size].cpu()).sum())
        return correct / x.shape[0]
    finally:
        model.train(was_training)


def train_zoo_model(
    name: str,
    *,
    data_root: str | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs",
    device: str | torch.device | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    download: bool = True,
    verbose: bool = False,
) -> Path:
    """Train zoo model ``name`` on its default data set and save it; return the weights path.

    Builds the model with ``seed``, trains on the ``train`` split with Adam (defaults from
    the zoo entry unless overridden), reports accuracy on the ``test`` split (and ``val``
    where the data set has one), and writes ``out_dir/NAME.safetensors`` plus the sidecar
    ``NAME.json`` whose ``meta`` records the settings, accuracies and wall time.
    """
    from boundkit.data import SPLIT_SEED, load_dataset
    from boundkit.data._common import DatasetFormatError
    from boundkit.models.io import save_model

    if name not in ZOO:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ZOO)}")
    entry = ZOO[name]
    epochs = entry.epochs if epochs is None else epochs
    lr = entry.lr if lr is None else lr
    batch_size = entry.batch_size if batch_size is None else batch_size
    # the split is the data set's (SPLIT_SEED), never the run's seed
    x_tr, y_tr = load_dataset(entry.dataset, data_root, "train", download=download)
    x_te, y_te = load_dataset(entry.dataset, data_root, "test", download=download)
    try:
        x_va, y_va = load_dataset(entry.dataset, data_root, "val", download=download)
    except DatasetFormatError:
        x_va = y_va = None
    model = build_model(name, seed=seed)
    t0 = time.perf_counter()
    train_model(
        model,
        x_tr,
        y_tr,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        verbose=verbose,
    )
    seconds = time.perf_counter() - t0
    model.cpu()
    meta = {
        "dataset": entry.dataset,
        "optimizer": "Adam",
        "lr": lr,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "trained_on": {"data": entry.dataset, "split": "train", "split_seed": SPLIT_SEED},
        "n_train": int(x_tr.shape[0]),
        "n_test": int(x_te.shape[0]),
        "train_accuracy": accuracy(model, x_tr, y_tr),
        "test_accuracy": accuracy(model, x_te, y_te),
        "train_seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if x_va is not None and y_va is not None:
        meta["val_accuracy"] = accuracy(model, x_va, y_va)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.safetensors"
    save_model(model, path, arch=name, meta=meta)
    if verbose:
        print(json.dumps({"path": str(path), **meta}, indent=2), flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m boundkit.models.train NAME [options]``."""
    ap = argparse.ArgumentParser(
        prog="python -m boundkit.models.train",
        description="Train a boundkit zoo model (Adam, seeded) and save it as safetensors+JSON.",
    )
    ap.add_argument("name", choices=sorted(ZOO), metavar="NAME", help="zoo architecture")
    ap.add_argument("--data-root", default=None, help="data folder (default: $BOUNDKIT_DATA)")
    ap.add_argument("--out", default="runs", help="output folder (default: runs)")
    ap.add_argument("--epochs", type=int, default=None, help="override the zoo default")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-download", action="store_true", help="never try to download data")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    path = train_zoo_model(
        args.name,
        data_root=args.data_root,
        epochs=args.epochs,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
        lr=args.lr,
        batch_size=args.batch_size,
        download=not args.no_download,
        verbose=not args.quiet,
    )
    meta = json.loads(path.with_suffix(".json").read_text())["meta"]
    print(
        f"{args.name}: test accuracy {meta['test_accuracy']:.4f} after {meta['epochs']} epochs "
        f"({meta['train_seconds']:.1f} s); saved {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
