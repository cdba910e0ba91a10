"""``nn.MultiheadAttention`` in torch capture: decomposed into linear, reshape, permute,
matmul, scale, softmax, matmul and linear nodes (``boundkit/graph/attention.py``), for
``batch_first`` True and False, ``need_weights`` True and False (the weights as torch returns
them), self- and cross-attention, one token, no biases, keyword calls; equal to torch's own
forward to 1e-6 in float64; certified with no adversarial example inside any ball; masks,
``is_causal``, learned key/value biases, zero attention, different ``kdim``/``vdim`` and
training-mode dropout refused with a one-line message."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from boundkit.errors import BoundkitError, UnsupportedLayerError
from boundkit.graph import capture
from boundkit.testing import assert_sound


class Net(nn.Module):
    """Tokens [N, T, E] from the input, an attention layer called one of the ways users call
    it, a residual and a head."""

    def __init__(self, form: str, batch_first: bool, t: int = 3, e: int = 4,
                 heads: int = 2, **kw) -> None:
        super().__init__()
        self.form, self.bf, self.t, self.e = form, batch_first, t, e
        self.a, self.b = nn.Linear(5, t * e), nn.Linear(5, t * e)
        self.att = nn.MultiheadAttention(e, heads, batch_first=batch_first, **kw)
        self.o = nn.Linear(t * e, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).reshape(-1, self.t, self.e)
        g = torch.sigmoid(self.b(x)).reshape(-1, self.t, self.e)
        q, kv = (h, h) if self.form != "cross" else (h, g)
        if not self.bf:
            q, kv = q.transpose(0, 1), torch.transpose(kv, 1, 0)
        if self.form == "weights":  # the weights returned and ignored
            out, _ = self.att(q, kv, kv)
        elif self.form == "keywords":
            out = self.att(query=q, key=kv, value=kv, need_weights=False)[0]
        elif self.form == "per_head":
            out, w = self.att(q, kv, kv, average_attn_weights=False)
        else:
            out = self.att(q, kv, kv, None, False)[0]
        if not self.bf:
            out = out.transpose(0, 1)
        return self.o((h + out).flatten(1))


CASES = [(form, bf) for form in ("self", "weights", "keywords", "per_head", "cross")
         for bf in (True, False)]


@pytest.mark.parametrize("form,batch_first", CASES)
def test_attention_is_decomposed_exactly_and_certifies_below_the_attacks(form, batch_first):
    torch.manual_seed(5)
    model = Net(form, batch_first).eval()
    x = torch.rand(3, 5)
    g = capture(model, x)
    ops = [n.op for n in g.nodes]
    assert "unknown" not in ops and ops.count("matmul") == 2 and "softmax" in ops, ops
    with torch.no_grad():
        ref = model.double()(x.double())
    assert torch.allclose(g.activations(x)[g.output], ref, rtol=0, atol=1e-6)
    model.float()
    # sound composes the same nodes' moduli for every form: checked on the plain one
    for method in ("sound", "crown") if form == "self" else ("crown",):
        assert_sound(model, x, method, exact=False, attack_steps=20)


@pytest.mark.parametrize("t,e,heads,kw", [(1, 4, 2, {}), (3, 4, 4, {"bias": False}),
                                          (2, 3, 1, {"dropout": 0.5})])
def test_one_token_one_head_width_no_bias_and_eval_dropout_certify_soundly(t, e, heads, kw):
    torch.manual_seed(6)
    model = Net("self", True, t=t, e=e, heads=heads, **kw).eval()
    x = torch.rand(4, 5)
    with torch.no_grad():
        ref = model.double()(x.double())
    assert torch.allclose(capture(model, x).activations(x)["o"], ref, rtol=0, atol=1e-6)
    model.float()
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=20)


class Masked(nn.Module):
    def __init__(self, form: str, **kw) -> None:
        super().__init__()
        self.form = form
        self.a = nn.Linear(4, 8)
        self.att = nn.MultiheadAttention(4, 2, batch_first=True, **kw)
        self.o = nn.Linear(8, 2)
        self.register_buffer("mask", torch.zeros(2, 2, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).reshape(-1, 2, 4)
        if self.form == "attn_mask":
            out = self.att(h, h, h, attn_mask=self.mask)[0]
        elif self.form == "key_padding_mask":
            out = self.att(h, h, h, key_padding_mask=h[:, :, 0] > 0)[0]
        elif self.form == "causal":
            out = self.att(h, h, h, attn_mask=self.mask, is_causal=True)[0]
        elif self.form == "time_major_residual":  # a residual in [T, N, E]: moves the batch
            t = h.transpose(0, 1)
            out = (t + self.att(t, t, t)[0]).transpose(0, 1)
        else:
            out = self.att(h, h, h)[0]
        return self.o(out.flatten(1))


@pytest.mark.parametrize("form,kw,msg", [
    ("attn_mask", {}, "mask"), ("key_padding_mask", {}, "mask"), ("causal", {}, "is_causal"),
    ("plain", {"kdim": 3, "vdim": 3}, "kdim"), ("plain", {"add_bias_kv": True}, "add_bias_kv"),
    ("plain", {"add_zero_attn": True}, "add_zero_attn"),
    ("time_major_residual", {"batch_first": False}, "batch dimension")])
def test_masks_and_unsupported_options_are_refused_in_one_line(form, kw, msg) -> None:
    bf = kw.pop("batch_first", True)
    model = Masked(form, **kw)
    model.att.batch_first = bf
    with pytest.raises(UnsupportedLayerError, match=msg) as info:
        capture(model.eval(), (4,))
    assert "\n" not in str(info.value)


def test_training_mode_dropout_is_refused() -> None:
    model = Masked("plain", dropout=0.3).eval()
    model.att.train()
    with pytest.raises(BoundkitError) as info:
        capture(model, (4,))
    assert "\n" not in str(info.value)


def test_its_onnx_export_imports_natively(tmp_path) -> None:
    """torch's export of ``nn.MultiheadAttention`` works time-major and folds the batch
    into the heads; the ONNX importer tracks where the batch is and imports it as the same
    function (``tests/models/test_onnx_mha.py`` covers it in depth)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import io
    import warnings

    from boundkit.models.onnx import load_onnx

    model = Net("self", True).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 5),), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    path = tmp_path / "mha.onnx"
    path.write_bytes(buf.getvalue())
    imported = load_onnx(path)
    x = torch.rand(4, 5)
    with torch.no_grad():
        assert torch.allclose(imported(x), model(x), rtol=0, atol=1e-5)
