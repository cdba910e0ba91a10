"""torch's ONNX export of ``nn.MultiheadAttention`` through the native importer (issue 24).

The export moves the batch axis (``[T, N, E]``), merges it with the heads (``[N*H, T, d]``)
and with the tokens (``[T*N, E]`` for the output projection's ``Gemm``), and computes
``N*H`` and ``N*T`` in its shape arithmetic. The importer tracks where the batch is
(``_Moved`` in ``boundkit/models/onnx.py``) and emits per-sample ops. Checked here:
``batch_first`` True and False, bias True and False, one and two heads, one and several
tokens, ``need_weights`` False (torch's fused path) and True (its ``bmm`` path on
``[N*H, T, d]``), cross-attention with its weights used (averaged or per head), a residual
added time-major, and a TinyViT-like model (patch embedding,
``nn.MultiheadAttention``, LayerNorm as the opset-17 op or decomposed, GELU, mean pooling):

* equal to onnxruntime at batch sizes 1 and 3 (1e-5) and to the torch model in float64;
* ``crown``'s relaxation of the imported graph gives the same margin bounds as that of the
  torch model's own capture at the same radii, its radius agrees with the torch model's
  to the search's tolerance, and ``assert_sound`` finds no adversarial example inside it;
* hostile files (a Transpose moving the batch into a reduced, softmax or gathered axis, a
  MatMul or Gemm contracting it, a Reshape splitting it across samples, a forged or
  float-cast batch size) are refused in one line naming the node.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx_helpers import classifier, ort_logits, rand  # noqa: E402

from boundkit.bounds.crown import CrownRun, plan_crown  # noqa: E402
from boundkit.bounds.engine import certify  # noqa: E402
from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import OnnxImportError, load_onnx  # noqa: E402
from boundkit.testing import assert_sound  # noqa: E402

N = helper.make_node


class MhaNet(nn.Module):
    """Tokens ``[N, T, E]`` from a tanh layer, ``nn.MultiheadAttention`` (self-attention),
    a residual and a linear head. ``time_major`` adds the residual in ``[T, N, E]`` (only
    with ``batch_first=False``: an ``Add`` of two tensors whose batch axis is moved)."""

    def __init__(self, batch_first: bool, *, bias: bool = True, heads: int = 2,
                 tokens: int = 3, dim: int = 4, need_weights: bool = False,
                 time_major: bool = False) -> None:
        super().__init__()
        self.bf, self.t, self.e, self.nw, self.tm = batch_first, tokens, dim, need_weights, \
            time_major
        self.emb = nn.Linear(tokens * dim, tokens * dim)
        self.att = nn.MultiheadAttention(dim, heads, batch_first=batch_first, bias=bias)
        self.head = nn.Linear(tokens * dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.emb(x)).reshape(x.shape[0], self.t, self.e)
        q = z if self.bf else z.transpose(0, 1)
        o = self.att(q, q, q, need_weights=self.nw)[0]
        if self.tm:
            o = (q + o).transpose(0, 1)
        else:
            o = z + (o if self.bf else o.transpose(0, 1))
        return self.head(o.flatten(1))


class MhaViT(nn.Module):
    """A TinyViT-like classifier built on ``nn.MultiheadAttention``: patch embedding,
    learned positions, a pre-norm block (attention and a GELU MLP, each with a residual),
    a final LayerNorm, the mean over tokens and a linear head."""

    def __init__(self, batch_first: bool = True, heads: int = 2, dim: int = 8,
                 patch: int = 4, image: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        c, h, w = image
        tokens = (h // patch) * (w // patch)
        self.bf = batch_first
        self.patch = nn.Conv2d(c, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), \
            nn.LayerNorm(dim)
        self.att = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        h = self.norm1(z)
        if not self.bf:
            h = h.transpose(0, 1)
        a = self.att(h, h, h, need_weights=False)[0]
        z = z + (a if self.bf else a.transpose(0, 1))
        z = z + self.mlp(self.norm2(z))
        return self.head(self.norm(z).mean(dim=1))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


def _export(model: nn.Module, in_shape: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    """The TorchScript exporter, batch axis dynamic, no constant folding (so the shape
    arithmetic around the batch is left for the importer)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *in_shape),), buf, dynamo=False,
                          input_names=["x"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=False)
    path.write_bytes(buf.getvalue())
    return path


def _imported(model: nn.Module, in_shape: tuple[int, ...], path: Path,
              opset: int = 17) -> nn.Module:
    """Export, import, and compare: onnxruntime at batch sizes 1 and 3 (1e-5 relative to
    the logits' scale), the torch model in float64 (both with the file's float32 weights;
    1e-6: the file holds the attention's scale ``sqrt(1/sqrt(d))`` rounded to float32,
    torch computes it in float64)."""
    imported = load_onnx(_export(model, in_shape, path, opset))
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3):
        x = torch.rand(n, *in_shape, generator=gen)
        ref = ort_logits(path, x.numpy())
        with torch.no_grad():
            got = imported(x).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    x64 = torch.rand(3, *in_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        a = copy.deepcopy(model).double()(x64)
        b = copy.deepcopy(imported).double()(x64)
    assert (a - b).abs().max() <= 1e-6 * max(1.0, float(a.abs().max()))
    return imported


def _margin_bounds(model: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``crown``'s margin bounds (``RadiusStep.bound``, ``phi``) at the radii ``eps``, without
    the box, on the model's captured graph."""
    g = capture(model, x)
    run = CrownRun(g, plan_crown(g), x.double(), None)
    with torch.no_grad():
        label = model(x).argmax(1)
    step = run.evaluate(eps, label)
    return torch.stack([step.bound, step.phi])


def _crown_agrees(model: nn.Module, imported: nn.Module, x: torch.Tensor,
                  same_graph: bool = True) -> None:
    """No adversarial example inside the imported model's ``crown`` certificate, whose radius
    agrees with the torch model's: to the search's tolerance (1e-3 each: the searches start
    from the two graphs' ``sound`` radii, which differ, and keep bounds from the steps they
    tried) where the two graphs relax alike (``same_graph``: then the margin bounds at the
    same radii agree to 1e-5: the file's float32 attention scale, and the model's own
    rounding charged on each graph's nodes, which differ: the file scales each projection
    by a batch norm), else to 1%."""
    a, b = certify(model, x, "crown"), certify(imported, x, "crown")
    rtol = 2e-3 if same_graph else 1e-2
    assert torch.allclose(a.radius, b.radius, rtol=rtol, atol=0), (a.radius.tolist(),
                                                                    b.radius.tolist())
    for scale in (0.5, 1.0, 1.5) if same_graph else ():
        eps = a.radius.clamp_min(1e-3) * scale
        ba, bb = _margin_bounds(model, x, eps), _margin_bounds(imported, x, eps)
        assert torch.allclose(ba, bb, rtol=1e-5, atol=1e-5), (scale, ba, bb)
    assert_sound(imported, x, "crown", exact=False, attack_steps=20)


CASES = [(bf, bias, heads, tokens) for bf in (True, False) for bias in (True, False)
         for heads, tokens in ((1, 1), (2, 3))]


@pytest.mark.parametrize("batch_first,bias,heads,tokens", CASES)
def test_exported_attention_imports_exactly(tmp_path: Path, batch_first: bool, bias: bool,
                                            heads: int, tokens: int) -> None:
    model = _seeded(MhaNet(batch_first, bias=bias, heads=heads, tokens=tokens), 3)
    imported = _imported(model, (tokens * 4,), tmp_path / "mha.onnx")
    ops = {n.op for n in capture(imported, (tokens * 4,))}
    assert {"matmul", "softmax"} <= ops and "unknown" not in ops


@pytest.mark.parametrize("batch_first", [True, False])
def test_need_weights_export_merges_batch_and_heads_and_imports(tmp_path: Path,
                                                                batch_first: bool) -> None:
    """``need_weights=True`` exports torch's ``bmm`` path: scores on ``[N*H, T, T]``."""
    model = _seeded(MhaNet(batch_first, need_weights=True), 4)
    _imported(model, (12,), tmp_path / "mha_w.onnx")


class CrossNet(nn.Module):
    """Cross-attention (3 query tokens, 2 key/value tokens from another layer) whose
    returned attention weights (averaged over heads, or per head) feed the head too."""

    def __init__(self, batch_first: bool, average: bool) -> None:
        super().__init__()
        self.bf, self.avg = batch_first, average
        self.a, self.b = nn.Linear(5, 12), nn.Linear(5, 8)
        self.att = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.head = nn.Linear(12 + (6 if average else 12), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.tanh(self.a(x)).reshape(-1, 3, 4)
        kv = torch.sigmoid(self.b(x)).reshape(-1, 2, 4)
        if not self.bf:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        o, w = self.att(q, kv, kv, average_attn_weights=self.avg)
        o = o if self.bf else o.transpose(0, 1)
        return self.head(torch.cat([o.flatten(1), w.flatten(1)], 1))


@pytest.mark.parametrize("batch_first,average", [(True, True), (False, False)])
def test_cross_attention_with_its_weights_used_imports(tmp_path: Path, batch_first: bool,
                                                       average: bool) -> None:
    model = _seeded(CrossNet(batch_first, average), 9)
    _imported(model, (5,), tmp_path / "cross.onnx")


def test_residual_added_time_major_imports(tmp_path: Path) -> None:
    """``q + att(q)`` on ``[T, N, E]``: an ``Add`` of two tensors whose batch is axis 1."""
    model = _seeded(MhaNet(False, time_major=True), 5)
    _imported(model, (12,), tmp_path / "mha_tm.onnx")


def test_opset_14_export_imports(tmp_path: Path) -> None:
    model = _seeded(MhaNet(True), 6)
    _imported(model, (12,), tmp_path / "mha14.onnx", opset=14)


@pytest.mark.parametrize("batch_first", [True, False])
def test_imported_attention_certifies_as_the_torch_model(tmp_path: Path,
                                                         batch_first: bool) -> None:
    torch.manual_seed(7)
    model = MhaNet(batch_first).eval()
    imported = _imported(model, (12,), tmp_path / "mha_c.onnx")
    _crown_agrees(model, imported, torch.rand(3, 12, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("opset,batch_first", [(17, True), (14, True), (17, False)])
def test_vit_with_multihead_attention_imports_and_certifies(tmp_path: Path, opset: int,
                                                            batch_first: bool) -> None:
    """LayerNorm as the opset-17 op or decomposed (opset 14), GELU as ``Erf``."""
    torch.manual_seed(8)
    model = MhaViT(batch_first).eval()
    imported = _imported(model, (1, 8, 8), tmp_path / "vit_mha.onnx", opset)
    ops = {n.op for n in capture(imported, (1, 8, 8))}
    assert {"layernorm", "gelu", "softmax", "matmul"} <= ops and "unknown" not in ops
    if opset == 17:
        x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        # the two graphs differ where the engine is sensitive to the form (the attention's
        # scale on q and k or on their product, one in_proj layer for q, k and v): their
        # radii differ by 0.1-0.15% here, both ways
        _crown_agrees(model, imported, x, same_graph=False)


# ----------------------------------------------------------------------------- hostile

BATCH = -(1 << 40) - 7  # the importer's symbolic batch size, forged in a file


def _hostile_body(case: str) -> tuple[list, dict, str, int | None]:
    """(nodes from ``x [N, 4, 3]`` to ``h``, initialisers, the refused node's expected
    message, ``h``'s elements per sample for the head or None)."""
    t = N("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="tb")  # [4, N, 3]
    if case == "reduce_over_batch":
        return ([t, N("ReduceMean", ["t"], ["h"], axes=[1], keepdims=0, name="bad")], {},
                r"'bad' \(op ReduceMean\): a mean over the batch axis", 12)
    if case == "softmax_over_batch":
        return ([t, N("Softmax", ["t"], ["h"], axis=1, name="bad")], {},
                r"'bad' \(op Softmax\): a softmax over the batch axis", 12)
    if case == "gather_batch":
        return ([t, N("Gather", ["t", "i0"], ["h"], axis=1, name="bad")],
                {"i0": np.array(0, dtype=np.int64)},
                r"'bad' \(op Gather\): gathering along the batch dimension", 12)
    if case == "matmul_contracts_batch":
        return ([N("Transpose", ["x"], ["t"], perm=[1, 2, 0]),  # [4, 3, N]
                 N("MatMul", ["t", "w"], ["h"], name="bad")], {"w": rand(2, 3)},
                r"'bad' \(op MatMul\): MatMul of \[4, 3, N\] by a matrix contracts the axis "
                r"holding the batch", 12)
    if case == "matmul_of_two_mixes":
        return ([t, N("Transpose", ["x"], ["u"], perm=[1, 2, 0]),  # [4, 3, N]
                 N("MatMul", ["t", "u"], ["h"], name="bad")], {},
                r"'bad' \(op MatMul\): operands of shapes \[4, N, 3\] and \[4, 3, N\] hold "
                r"the batch differently", 12)
    if case == "gemm_contracts_batch":
        return ([N("Reshape", ["x", "s"], ["f"]), N("Transpose", ["f"], ["ft"], perm=[1, 0]),
                 N("Gemm", ["ft", "w"], ["h"], transB=1, name="bad")],
                {"s": np.array([-1, 12], dtype=np.int64), "w": rand(5, 2)},
                r"'bad' \(op Gemm\): Gemm on \[12, N\] contracts the axis holding the batch",
                None)
    if case == "reshape_mixes":
        return ([t, N("Reshape", ["t", "s"], ["h"], name="bad")],
                {"s": np.array([-1, 12], dtype=np.int64)},
                r"'bad' \(op Reshape\): target shape \[-1, 12\] splits the axis holding the "
                r"batch across samples", 12)
    if case == "forged_batch":
        return ([N("Reshape", ["x", "s"], ["h"], name="bad")],
                {"s": np.array([BATCH, 12], dtype=np.int64)},
                r"initialiser 's' holds a value the importer reserves for the symbolic batch",
                12)
    if case == "batch_cast_to_float":
        return ([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i0"], ["n"], axis=0),
                 N("Cast", ["n"], ["nf"], to=TensorProto.FLOAT, name="bad"),
                 N("Mul", ["x", "nf"], ["h"])], {"i0": np.array(0, dtype=np.int64)},
                r"'bad' \(op Cast\): arithmetic on the batch size", 12)
    if case == "batch_squared":
        return ([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i0"], ["n"], axis=0),
                 N("Mul", ["n", "n"], ["nn"], name="bad"),
                 N("Unsqueeze", ["nn", "ax0"], ["n1"]),
                 N("Concat", ["n1", "m1"], ["s"], axis=0),
                 N("Reshape", ["x", "s"], ["h"])],
                {"i0": np.array(0, dtype=np.int64), "m1": np.array([-1], dtype=np.int64),
                 "ax0": np.array([0], dtype=np.int64)},
                r"'bad' \(op Mul\): arithmetic on the batch size .*times itself", 12)
    raise AssertionError(case)


HOSTILE = ["reduce_over_batch", "softmax_over_batch", "gather_batch", "matmul_contracts_batch",
           "matmul_of_two_mixes", "gemm_contracts_batch", "reshape_mixes", "forged_batch",
           "batch_cast_to_float", "batch_squared"]


@pytest.mark.parametrize("case", HOSTILE)
def test_ops_that_would_mix_samples_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    nodes, inits, match, numel = _hostile_body(case)
    p = classifier(tmp_path, nodes, (4, 3), "h", numel, inits, opset=13, name=f"{case}.onnx")
    with pytest.raises(OnnxImportError, match=match) as info:
        load_onnx(p, check=False)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(p))


def test_output_with_the_batch_moved_is_refused(tmp_path: Path) -> None:
    p = classifier(tmp_path, [N("Transpose", ["x"], ["logits"], perm=[1, 0])], (3,),
                   "logits", None, {}, classes=3)
    with pytest.raises(OnnxImportError, match=r"the output \[3, N\] does not hold the batch "
                       r"in its first axis") as info:
        load_onnx(p, check=False)
    assert "\n" not in str(info.value)


def test_splitting_at_the_batch_factors_is_per_sample(tmp_path: Path) -> None:
    """[4, N, 3] -> [2, 2N, 3] (the batch between the factors 2 and 1 of the second axis)
    -> [4, N, 3] -> [1, 4, N, 3] -> back to [N, 4, 3]: exact, equal to onnxruntime."""
    body = [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            N("Reshape", ["t", "s1"], ["r"]), N("Relu", ["r"], ["rr"]),
            N("Reshape", ["rr", "s2"], ["u"]), N("Unsqueeze", ["u", "ax0"], ["u1"]),
            N("Sigmoid", ["u1"], ["u2"]), N("Squeeze", ["u2", "ax0"], ["u3"]),
            N("Transpose", ["u3"], ["h"], perm=[1, 0, 2])]
    inits = {"s1": np.array([2, -1, 3], dtype=np.int64),
             "s2": np.array([4, -1, 3], dtype=np.int64), "ax0": np.array([0], dtype=np.int64)}
    p = classifier(tmp_path, body, (4, 3), "h", 12, inits, opset=13)
    m = load_onnx(p)
    x = np.random.default_rng(0).standard_normal((3, 4, 3)).astype(np.float32)
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    assert np.abs(got - ort_logits(p, x)).max() <= 1e-5
