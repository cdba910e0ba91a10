"""boundkit ``crown`` against auto_LiRPA 0.3's CROWN, side by side in one process.

Models and samples of ``../shared/REFERENCE-NUMBERS.md``: the MNIST 784-100-100-10 MLP and
the small CNN (trained by ``benchmarks/_models.py``, seeded, cached under ``runs/models``),
the first N correctly classified test images. For every sample: boundkit's certified radius
(``crown``, input box [0, 1], and ``crown`` with ``box=None``, the same mathematics as
auto_LiRPA's L2 CROWN, which ignores the box), ``sound``, and auto_LiRPA's CROWN radius by a
per-sample 15-step bisection on [0, DeepFool norm] (auto_LiRPA's L2 perturbation takes one
epsilon per batch; a small subclass gives it one per sample). Reports the per-sample ratio
to auto_LiRPA (median and minimum over samples) and the time per sample, and writes
``docs/results/crown_vs_lirpa.md``. Besides zoo names, ``--models`` takes public ONNX networks
of ``../shared/networks`` as ``onnx:FILE`` (MNIST nets, imported with ``load_onnx``), and
``NAME:gelu_tanh`` is zoo model NAME with its GELUs switched to the tanh form (auto_LiRPA 0.3
has no ``Erf``, so this is the GELU model both can bound).

auto_LiRPA 0.3 (optional: ``pip install auto-LiRPA==0.3 --no-deps``) needs four shims on
torch 2.13 / numpy 2 (applied below): ``numpy.lib.arraysetops``, the ONNX opset helper,
``torch._C.Node.__getitem__`` and ``BoundedModule._named_members``'s ``remove_duplicate``
argument (``BoundedModule.parameters()``, which auto_LiRPA calls for the identity patches of an
``add`` node such as a residual connection's).

    python -m benchmarks.crown_vs_lirpa [--n 100] [--models mlp_mnist small_cnn resnet_mnist]
    python -m benchmarks.crown_vs_lirpa --n 20 --models mlp_mnist_deep onnx:mnist-net_256x2.onnx \
        --lirpa-alpha --no-alpha mlp_mnist_deep --merge
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import resource
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, REPO, trained
from boundkit.data import load_dataset


def _set_opset(version: int) -> None:
    """auto_LiRPA 0.3 traces at ONNX opset 12 through a helper torch 2.13 no longer has:
    set the exporter's opset itself (left at torch's default 20, ``ReduceMean`` takes its
    axes as an input and 0.3 fails with ``KeyError: 'axes'``; LayerNorm and GELU stay
    single ops 0.3 does not know)."""
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # an older torch: its own helper exists and is used instead
        return
    GLOBALS.export_onnx_opset_version = version


def _lirpa():
    """Import auto_LiRPA 0.3 with the torch 2.13 / numpy 2 shims."""
    if "numpy.lib.arraysetops" not in sys.modules:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = shim
    import torch.onnx.symbolic_helper as sh

    if not hasattr(sh, "_set_opset_version"):
        sh._set_opset_version = _set_opset  # type: ignore[attr-defined]
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)
    try:
        import auto_LiRPA
    except ImportError as exc:
        raise SystemExit(f"auto_LiRPA 0.3 is needed: pip install auto-LiRPA==0.3 --no-deps "
                         f"({exc})") from None
    bounded = auto_LiRPA.BoundedModule
    if not getattr(bounded._named_members, "_boundkit_shim", False):
        # torch 2 passes remove_duplicate, which 0.3's override lacks (it always removes them)
        own = bounded._named_members

        def named_members(self, get_members_fn, prefix="", recurse=True,  # noqa: ANN001, ANN202
                          remove_duplicate=True):
            return own(self, get_members_fn, prefix, recurse)

        named_members._boundkit_shim = True  # type: ignore[attr-defined]
        bounded._named_members = named_members
    return auto_LiRPA


#: auto_LiRPA's options: dense intermediate bounds; CROWN-Optimized (alpha-CROWN) with 20
#: iterations at lr 0.1 (REFERENCE-NUMBERS), its sparse alphas off (they crash in 0.3)
LIRPA_OPTS = {"sparse_intermediate_bounds": False, "sparse_features_alpha": False,
              "sparse_spec_alpha": False,
              "optimize_bound_args": {"iteration": 20, "lr_alpha": 0.1}}


@dataclass
class LirpaForm:
    """The model auto_LiRPA is given (the same function as boundkit's, rewritten with ops
    auto_LiRPA 0.3 can bound), its ``bound_opts``, and whether ``torch.softmax`` is traced
    as :math:`e^x/\\sum e^x` (:func:`_softmax_as_exp`) while it builds its graph."""

    model: torch.nn.Module
    opts: dict = field(default_factory=lambda: dict(LIRPA_OPTS))
    softmax_as_exp: bool = False
    #: the rewritings applied, in order
    steps: tuple[str, ...] = ()

    def bounded(self, al, x: torch.Tensor):  # noqa: ANN001, ANN201
        """auto_LiRPA's ``BoundedModule`` of this form, traced at ``x``."""
        with _softmax_as_exp(self.softmax_as_exp):
            return al.BoundedModule(self.model, x, device="cpu", bound_opts=self.opts)


@contextlib.contextmanager
def _softmax_as_exp(on: bool) -> Iterator[None]:
    """While auto_LiRPA traces the model: ``torch.softmax(x, dim)`` as
    ``exp(x) / exp(x).sum(dim)`` (the same function; auto_LiRPA 0.3 traces a softmax as
    ``exp(x - max x)`` and cannot bound a max over perturbed inputs)."""
    if not on:
        yield
        return
    own = torch.softmax

    def softmax(x: torch.Tensor, dim: int, dtype: Any = None) -> torch.Tensor:
        e = torch.exp(x)
        return e / e.sum(dim, keepdim=True)

    torch.softmax = softmax  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.softmax = own


def lirpa_forms(model: torch.nn.Module) -> Iterator[LirpaForm]:
    """The rewritings of ``model`` tried in turn, each adding one to the last (only those
    that apply): the model as it is; a ``TinyViT``'s positions ``[1, T, D]`` as ``[T, D]``
    (the same sum by broadcasting; 0.3's ``BoundAdd`` asserts on a parameter with a
    leading 1); convolutions in auto_LiRPA's ``matrix`` mode (its ``patches`` mode reaches
    a ``ReduceMean`` as a ``Patches`` object it cannot expand); ``torch.softmax`` traced as
    ``exp / sum``."""
    from boundkit.models.vit import TinyViT

    form = LirpaForm(model)
    yield form
    vits = [m for m in model.modules() if isinstance(m, TinyViT)]
    if any(v.pos.dim() == 3 and v.pos.shape[0] == 1 for v in vits):
        rewritten = copy.deepcopy(model)
        for v in rewritten.modules():
            if isinstance(v, TinyViT) and v.pos.dim() == 3 and v.pos.shape[0] == 1:
                v.pos = torch.nn.Parameter(v.pos.detach()[0].clone())
        form = replace(form, model=rewritten, steps=(*form.steps, "positions [T, D]"))
        yield form
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        form = replace(form, opts=form.opts | {"conv_mode": "matrix"},
                       steps=(*form.steps, "conv_mode matrix"))
        yield form
    form = replace(form, softmax_as_exp=True, steps=(*form.steps, "softmax as exp / sum"))
    yield form


def lirpa_form(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor
               ) -> tuple[LirpaForm, list[str]]:
    """The first of :func:`lirpa_forms` on which auto_LiRPA builds and runs one CROWN bound
    (L2, radius 1e-4, on the first sample), and how each earlier one failed (its first
    error line). Raises the last form's error where none runs. Every form is checked to
    compute the model's function on ``x`` (to 1e-4 relative)."""
    al = _lirpa()
    from auto_LiRPA.perturbations import PerturbationLpNorm

    with torch.no_grad():
        ref = model(x)
    failures: list[str] = []
    last: Exception | None = None
    c = ref.shape[1]
    eye = torch.eye(c)
    others = torch.cat([torch.arange(0, int(label[0])), torch.arange(int(label[0]) + 1, c)])
    spec = (eye[label[0]] - eye[others]).unsqueeze(0)
    for form in lirpa_forms(model):
        with torch.no_grad(), _softmax_as_exp(form.softmax_as_exp):
            got = form.model(x)
        gap = float((got - ref).abs().max())
        if not gap <= 1e-4 * (1.0 + float(ref.abs().max())):
            raise RuntimeError(f"rewriting {form.steps} changes the model's outputs by {gap}")
        try:
            with _unsupported_ops() as ops:
                bm = form.bounded(al, torch.zeros_like(x[:1]))
            xb = al.BoundedTensor(x[:1], PerturbationLpNorm(norm=2, eps=1e-4))
            bm.compute_bounds(x=(xb,), C=spec, method="CROWN")
        except Exception as exc:  # noqa: BLE001 - what auto_LiRPA 0.3 raises is the record
            last = exc
            named = f" ({', '.join(sorted(set(ops)))})" if ops else ""
            failures.append(f"{' + '.join(('as is', *form.steps))}: {_first_line(exc)}{named}")
            continue
        return form, failures
    assert last is not None
    raise LirpaFailed(failures) from last


class LirpaFailed(RuntimeError):
    """auto_LiRPA 0.3 bounds none of :func:`lirpa_forms`: ``failures`` says how each
    failed."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(failures[-1])
        self.failures = failures


@contextlib.contextmanager
def _unsupported_ops() -> Iterator[list[str]]:
    """The operations auto_LiRPA logs as unsupported while it builds a graph (its exception
    only says "There are unsupported operations")."""
    import logging

    found: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("Name: "):
                found.append(msg.split("Name: ", 1)[1].split(",")[0])

    handler = Grab(level=logging.ERROR)
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in
                                      list(logging.root.manager.loggerDict)
                                      if n.startswith("auto_LiRPA"))]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield found
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (auto_LiRPA's messages can be long)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else repr(exc)}"


def lirpa_radius(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor,
                 upper: torch.Tensor, steps: int = 15, method: str = "CROWN",
                 lower: torch.Tensor | None = None, form: LirpaForm | None = None,
                 guess: torch.Tensor | None = None) -> torch.Tensor:
    """auto_LiRPA radius per sample (``method`` "CROWN" or "CROWN-Optimized"): bisection on
    [lower, upper] (``lower``: a certified radius, default 0). ``form``: the rewriting of
    ``model`` auto_LiRPA is given (:func:`lirpa_form`; default: ``model`` as it is).
    ``guess`` [N] (conv nets, one sample at a time): a warm bracket from it, then bisection
    to 0.5% relative (:func:`_lirpa_one`)."""
    al = _lirpa()
    form = form or LirpaForm(model)
    from auto_LiRPA.perturbations import PerturbationLpNorm

    class PerSampleL2(PerturbationLpNorm):
        """One epsilon per sample: [N, 1, ...] for the input bounds, [N, 1] in the dual norm."""

        def concretize_matrix(self, x, A, sign, extra_constr):  # noqa: ANN001
            eps = self.eps
            self.eps = eps.reshape(eps.shape[0], 1)
            try:
                return super().concretize_matrix(x, A, sign, extra_constr)
            finally:
                self.eps = eps

    n, c = x.shape[0], int(model(x[:1]).shape[1])
    if x.dim() > 2:
        # conv nets: auto_LiRPA's "matrix" conv mode fails on torch 2.13 and its "patches"
        # mode takes one scalar epsilon, so each sample is bisected on its own
        low = torch.zeros(n) if lower is None else lower
        return torch.cat([_lirpa_one(al, form, x[i:i + 1], label[i:i + 1], upper[i:i + 1],
                                     steps, method, float(low[i]),
                                     None if guess is None else float(guess[i]))
                          for i in range(n)])
    bm = form.bounded(al, torch.zeros_like(x[:1]))
    eye = torch.eye(c)
    spec = eye[label].unsqueeze(1) - eye.unsqueeze(0)  # [N, C, C]
    others = [torch.cat([torch.arange(0, int(y)), torch.arange(int(y) + 1, c)]) for y in label]
    spec = torch.stack([spec[i, others[i]] for i in range(n)])  # [N, C-1, C]
    lo = torch.zeros(n) if lower is None else lower.float().clone()
    hi = upper.float().clone()
    for _ in range(steps):
        mid = (lo + hi) / 2
        ptb = PerSampleL2(norm=2, eps=mid.reshape(-1, *([1] * (x.dim() - 1))))
        xb = al.BoundedTensor(x, ptb)
        lb, _ = bm.compute_bounds(x=(xb,), C=spec, method=method)
        ok = lb.min(1).values > 0
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo.double()


def _lirpa_one(al, form: LirpaForm, x: torch.Tensor, label: torch.Tensor,  # noqa: ANN001
               upper: torch.Tensor, steps: int, method: str, lower: float,
               guess: float | None = None, rtol: float = 5e-3) -> torch.Tensor:
    """auto_LiRPA's radius of one sample: bisection on [lower, upper] (``steps`` halvings);
    with ``guess`` (e.g. boundkit's radius of the same bound), a bracket found from it by
    doubling or halving, then bisection to a relative width ``rtol``."""
    from auto_LiRPA.perturbations import PerturbationLpNorm

    with torch.no_grad():
        c = int(form.model(x).shape[1])
    bm = form.bounded(al, torch.zeros_like(x))
    others = torch.cat([torch.arange(0, int(label)), torch.arange(int(label) + 1, c)])
    eye = torch.eye(c)
    spec = (eye[label] - eye[others]).unsqueeze(0)  # [1, C-1, C]
    def passes(eps: float) -> bool:
        xb = al.BoundedTensor(x, PerturbationLpNorm(norm=2, eps=eps))
        lb, _ = bm.compute_bounds(x=(xb,), C=spec, method=method)
        return float(lb.min()) > 0

    lo, hi = lower, float(upper)
    if guess is not None and lo < guess < hi:
        # a warm bracket: doubling / halving from the guess until one radius passes and
        # one fails (both ends are auto_LiRPA's own answers), then bisection to rtol
        step, tries = guess, 0
        while hi > lo * (1 + rtol) and lo < step < hi and tries < 20:
            tries += 1
            if passes(step):
                lo, step = step, step * 2
            else:
                hi, step = step, step / 2
            if lo > 0 and hi < math.inf and hi <= 2 * lo:
                break
        while hi > lo * (1 + rtol) and lo > 0:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if passes(mid) else (lo, mid)
        if lo > 0:
            return torch.tensor([lo], dtype=torch.float64)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return torch.tensor([lo], dtype=torch.float64)


def _timed(fn):  # noqa: ANN001, ANN202
    """``fn()`` and its process CPU time in seconds (1 thread: robust to other load)."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


#: public networks (``onnx:FILE``): the folder and the per-sample shape boundkit's data has
#: (beside the data folder: ``../shared/networks``, or ``$BOUNDKIT_NETWORKS``)
NETWORKS = Path(os.environ.get("BOUNDKIT_NETWORKS", DEFAULT_DATA.parent / "networks"))
#: file -> (data set, per-sample shape, normalisation from the networks' README)
ONNX_NETWORKS: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "mnist-net_256x2.onnx": ("mnist", (1, 28, 28), None),
    "cifar_base_kw.onnx": ("cifar10", (3, 32, 32),
                           ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225))),
    # VNN-COMP 2023's vision transformer (analyses/vit_pgd.py)
    "pgd_2_3_16.onnx": ("cifar10", (3, 32, 32),
                        ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))),
}


def dataset_of(name: str) -> str:
    """The data set a benchmark model is fed (a zoo model's own: MNIST or CIFAR-10)."""
    from boundkit.models.zoo import ZOO

    if name.startswith("onnx:"):
        return ONNX_NETWORKS[name.split(":", 1)[1]][0]
    base = name.split(":", 1)[0]
    return ZOO[base].dataset if base in ZOO else "mnist"


def load(name: str, data_root: Path, cache: Path) -> torch.nn.Module:
    """A zoo model (trained and cached), or ``onnx:FILE`` from ``NETWORKS``."""
    if name.startswith("onnx:"):
        from boundkit.models import load_onnx

        file = name.split(":", 1)[1]
        if file not in ONNX_NETWORKS:
            raise SystemExit(f"{file}: not a network this script knows "
                             f"({sorted(ONNX_NETWORKS)})")
        _, shape, normalize = ONNX_NETWORKS[file]
        return load_onnx(NETWORKS / file, input_shape=shape, normalize=normalize).eval()
    if name.endswith(":gelu_tanh"):
        # the same trained weights with GELU's tanh form (auto_LiRPA 0.3 has no Erf): both
        # tools bound this very model
        model = trained(name.split(":", 1)[0], data_root, cache)
        for m in model.modules():
            if isinstance(m, torch.nn.GELU):
                m.approximate = "tanh"
        return model
    return trained(name, data_root, cache)


def run_model(name: str, n: int, data_root: Path, cache: Path, lirpa_alpha: bool,
              alpha: bool = True, lirpa_steps: int = 15, warm: bool = False,
              rtol: float = 1e-3) -> tuple[list[str], dict]:
    model = load(name, data_root, cache)
    x_all, y_all = load_dataset(dataset_of(name), data_root, "test")
    with torch.no_grad():
        pred = model(x_all[:2000]).argmax(1)
    idx = torch.nonzero(pred == y_all[:2000]).flatten()[:n]
    x, label = x_all[idx].float(), y_all[idx]
    radius: dict[str, torch.Tensor] = {}
    secs: dict[str, float] = {}
    radius["sound"], secs["sound"] = _timed(lambda: bk.certify(model, x, "sound").radius)
    crown, secs["crown"] = _timed(lambda: bk.certify(model, x, "crown", rtol=rtol))
    radius["crown"] = crown.radius
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    radius["crown_nobox"], secs["crown_nobox"] = _timed(
        lambda: bk.certify(model, x, "crown", box=None, rtol=rtol).radius)
    if alpha:
        radius["alpha"], secs["alpha"] = _timed(
            lambda: bk.certify(model, x, "alpha", rtol=rtol).radius)
        radius["alpha_nobox"], secs["alpha_nobox"] = _timed(
            lambda: bk.certify(model, x, "alpha", box=None, rtol=rtol).radius)
    upper = bk.attack(model, x, "deepfool").norm
    upper = torch.where(torch.isfinite(upper), upper, torch.full_like(upper, 10.0))
    # the bisection's upper end must fail: DeepFool's point is adversarial, so it does
    failures: list[str] = []
    try:
        form, failures = lirpa_form(model, x, label)
        radius["lirpa"], secs["lirpa"] = _timed(lambda: lirpa_radius(
            model, x, label, upper * 1.001, steps=lirpa_steps, form=form,
            guess=radius["crown_nobox"] if warm else None))
    except Exception as exc:  # noqa: BLE001 - auto_LiRPA 0.3 refuses ops it lacks this way
        return _without_lirpa(name, n, radius, secs, upper, crown, exc,
                              getattr(exc, "failures", failures))
    if lirpa_alpha:  # started from its CROWN radius, as in REFERENCE-NUMBERS
        radius["lirpa_alpha"], secs["lirpa_alpha"] = _timed(lambda: lirpa_radius(
            model, x, label, upper * 1.001, steps=lirpa_steps, method="CROWN-Optimized",
            lower=radius["lirpa"], form=form))
    # soundness: every certificate below a verified adversarial example's norm
    ours = [k for k in ("crown", "crown_nobox", "alpha", "alpha_nobox", "sound") if k in radius]
    viol = sum(int((radius[k] > upper).sum()) for k in ours)
    ok = radius["lirpa"] > 0
    ref = radius["lirpa"][ok]
    med = {k: float(np.median((v[ok] / ref).numpy())) for k, v in radius.items()}
    low = {k: float((v[ok] / ref).min()) for k, v in radius.items()}
    per = {k: v / n for k, v in secs.items()}
    stats = {
        "n": n, "lirpa_zero": int((~ok).sum()),
        "median_ratio_to_lirpa_crown": med,
        "min_ratio_to_lirpa_crown": low,
        "q10_ratio_crown_nobox": float(np.quantile((radius["crown_nobox"][ok] / ref).numpy(),
                                                   0.1)),
        "median_radius": {k: float(v.median()) for k, v in radius.items()}
        | {"deepfool": float(upper.median())},
        "cpu_s_per_sample": per,
        "from_sound": int(crown.info["from_sound"].sum()),
        "violations_vs_deepfool": viol,
        "peak_rss_gb_after_crown": rss_gb,
        "lirpa_form": list(form.steps), "lirpa_failed_forms": failures,
        "lirpa_steps": lirpa_steps, "lirpa_warm_bracket": warm, "crown_rtol": rtol,
    }
    if lirpa_alpha and alpha:
        la = radius["lirpa_alpha"][ok]
        stats["median_ratio_to_lirpa_alpha"] = {
            k: float(np.median((radius[k][ok] / la).numpy())) for k in ("alpha", "alpha_nobox")}
        stats["min_ratio_to_lirpa_alpha"] = {
            k: float((radius[k][ok] / la).min()) for k in ("alpha", "alpha_nobox")}

    def cell(k: str) -> str:
        return f"{med[k]:.3f} (min {low[k]:.3f})" if k in med else "-"

    def ms(k: str) -> str:
        return f"{per[k] * 1e3:.0f}" if k in per else "-"

    la_time = (f"{per['alpha'] / per['lirpa_alpha']:.2f}x" if lirpa_alpha and alpha
               else "-")
    lines = [
        f"| {name} ({n}) | {cell('crown')} | {cell('crown_nobox')} | {cell('alpha')} | "
        f"{cell('alpha_nobox')} | {cell('lirpa_alpha')} | {cell('sound')} | "
        f"{ms('crown')} | {ms('alpha')} | {ms('lirpa')} | {ms('lirpa_alpha')} | "
        f"{per['crown'] / per['lirpa']:.2f}x | {la_time} | {viol} |"
    ]
    return lines, stats


def _without_lirpa(name: str, n: int, radius: dict[str, torch.Tensor], secs: dict[str, float],
                   upper: torch.Tensor, crown: Any, exc: Exception,
                   failures: list[str] | None = None) -> tuple[list[str], dict]:
    """The row of a model auto_LiRPA cannot bound: boundkit's radii and times, the reason
    (and how each rewriting of :func:`lirpa_forms` failed)."""
    why = _first_line(exc)
    ours = [k for k in ("crown", "crown_nobox", "alpha", "alpha_nobox", "sound") if k in radius]
    viol = sum(int((radius[k] > upper).sum()) for k in ours)
    per = {k: v / n for k, v in secs.items()}
    stats = {"n": n, "lirpa_error": why, "lirpa_failed_forms": failures or [],
             "median_radius": {k: float(v.median()) for k, v in radius.items()}
             | {"deepfool": float(upper.median())},
             "cpu_s_per_sample": per, "from_sound": int(crown.info["from_sound"].sum()),
             "violations_vs_deepfool": viol,
             "peak_rss_gb_after_crown": resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 2**20}
    med = stats["median_radius"]
    lines = [f"| {name} ({n}) | radius {med['crown']:.4g} | radius {med['crown_nobox']:.4g} | "
             f"- | - | - | radius {med['sound']:.4g} | {per['crown'] * 1e3:.0f} | - | "
             f"auto_LiRPA 0.3 fails ({why[:80]}) | - | - | - | {viol} |"]
    return lines, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-cnn", type=int, default=None,
                    help="samples for conv nets (default --n)")
    ap.add_argument("--models", nargs="+", default=["mlp_mnist", "small_cnn"])
    ap.add_argument("--lirpa-alpha", nargs="*", default=["mlp_mnist"],
                    help="models on which auto_LiRPA's CROWN-Optimized also runs (slow)")
    ap.add_argument("--no-alpha", nargs="*", default=[],
                    help="models on which boundkit's alpha does not run (slow on deep nets)")
    ap.add_argument("--lirpa-steps", type=int, default=15,
                    help="bisection steps of auto_LiRPA's radius on [0, DeepFool norm]")
    ap.add_argument("--lirpa-warm", action="store_true",
                    help="conv nets: auto_LiRPA's radius bracketed from boundkit's no-box "
                         "radius by doubling / halving, then bisected to 0.5%% relative "
                         "(fewer bound calls than 15 halvings of [0, DeepFool norm])")
    ap.add_argument("--rtol", type=float, default=1e-3,
                    help="relative width to which boundkit's crown and alpha radii are "
                         "searched")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "crown_vs_lirpa.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows of an earlier run (OUT.json) and "
                         "replace those of --models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cmd = " ".join(["python -m benchmarks.crown_vs_lirpa", *sys.argv[1:]])
    store = args.out.with_suffix(".json")
    runs: dict[str, dict] = {}
    if args.merge and store.exists():
        runs = json.loads(store.read_text())
    for name in args.models:
        n = (args.n if name.startswith(("mlp", "onnx:")) or args.n_cnn is None
             else args.n_cnn)
        lines, stats = run_model(name, n, args.data, args.cache, name in args.lirpa_alpha,
                                 name not in args.no_alpha, args.lirpa_steps,
                                 args.lirpa_warm, args.rtol)
        runs[name] = {"lines": lines, "stats": stats, "command": cmd,
                      "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                      "threads": args.threads}
        print(name, stats, flush=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(runs, indent=1))
    rows = [line for r in runs.values() for line in r["lines"]]
    all_stats = {name: r["stats"] for name, r in runs.items()}
    by_command: dict[str, list[str]] = {}
    for name, r in runs.items():
        key = (f"`{r['command']}` ({r['date']}, torch {r['torch']}, {r['threads']} "
               "thread(s))")
        by_command.setdefault(key, []).append(name)
    commands = [f"{k}: {', '.join(v)}" for k, v in by_command.items()]
    doc = [
        "# boundkit `crown` and `alpha` vs auto_LiRPA 0.3 CROWN and CROWN-Optimized (L2)", "",
        "Generated by (rows per command):", "", *[f"- {c}" for c in commands], "",
        "Same process, same samples: the first n correctly classified test images (MNIST, or "
        "CIFAR-10 for CIFAR models), "
        "n per model below.", "",
        "Ratios are per-sample radius / auto_LiRPA CROWN radius (bisection on [0, DeepFool "
        "norm], 15 steps unless the command gives `--lirpa-steps`), medians over samples "
        "and, in brackets, the minimum; "
        "auto_LiRPA CROWN-Optimized (alpha-CROWN, "
        "20 iterations, lr 0.1) is bisected from its CROWN radius. `crown` and `alpha` use the "
        "input box [0, 1]; `no box` is the same mathematics as auto_LiRPA's L2 bounds (which "
        "ignore the box). Times are process CPU time per sample over the whole batch (one "
        "thread; boundkit: float64 with rounding margins, radius to 1e-3 relative unless the "
        "command gives `--rtol`; auto_LiRPA: "
        "float32). auto_LiRPA 0.3's CROWN-Optimized cannot run on max pooling (a TypeError "
        "in `operators/pooling.py` `init_opt_parameters` under torch 2): no `LiRPA alpha` on "
        "the small CNN and LeNet-5.", "",
        "| model (n) | crown | crown no box | alpha | alpha no box | LiRPA alpha | sound | "
        "crown ms | alpha ms | LiRPA ms | LiRPA alpha ms | crown / LiRPA time | "
        "alpha / LiRPA alpha time | violations (radius > DeepFool) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Details:", "",
    ]
    for name, s in all_stats.items():
        tried = "".join(f"; {f}" for f in s.get("lirpa_failed_forms", []))
        if "lirpa_error" in s:
            doc.append(f"- {name}: median radius {_fmt(s['median_radius'])}; auto_LiRPA 0.3 "
                       f"cannot bound it: {s['lirpa_error']}"
                       + (f" (forms tried and their errors{tried})" if tried else "") + ".")
            continue
        if s.get("lirpa_form"):
            doc.append(f"- {name}: auto_LiRPA bounds it rewritten as "
                       f"{' + '.join(s['lirpa_form'])} (the same function, outputs checked); "
                       f"the earlier forms failed{tried}. Its radius: "
                       + ("a bracket from boundkit's no-box radius (doubling / halving, "
                          "each end auto_LiRPA's own answer), bisected to 0.5% relative."
                          if s.get("lirpa_warm_bracket") else
                          f"{s.get('lirpa_steps', 15)}-step bisection."))
        doc.append(f"- {name}: median radius {_fmt(s['median_radius'])}; q10 of crown no box / "
                   f"LiRPA {s['q10_ratio_crown_nobox']:.3f}; crown kept the sound radius on "
                   f"{s['from_sound']} samples; auto_LiRPA radius 0 on {s['lirpa_zero']}; "
                   f"peak RSS after the crown batch {s['peak_rss_gb_after_crown']:.2f} GB.")
        if "median_ratio_to_lirpa_alpha" in s:
            doc.append(f"  Median per-sample ratio to auto_LiRPA CROWN-Optimized: "
                       f"{_fmt(s['median_ratio_to_lirpa_alpha'])}"
                       + (f"; minimum {_fmt(s['min_ratio_to_lirpa_alpha'])}"
                          if "min_ratio_to_lirpa_alpha" in s else "") + ".")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc) + "\n")
    print("\n".join(doc))


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())


if __name__ == "__main__":
    main()
