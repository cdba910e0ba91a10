"""GELU's tanh form as torch's TorchScript exporter writes it before opset 20 (``Mul(x, x)``,
``Mul`` to the cube, ``* 0.044715``, ``+ x``, ``* sqrt(2 / pi)``, ``Tanh``, ``+ 1``,
``* x``, ``* 0.5``) and with ``Pow(x, 3)``: imported as one ``gelu`` node
(``approximate="tanh"``), matching onnxruntime to 1e-5; a chain with another constant
imports as its products, a ``Pow`` outside the pattern is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, export, rand  # noqa: E402

from boundkit.errors import BoundkitError  # noqa: E402
from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import compare_with_onnxruntime, load_onnx  # noqa: E402

N = helper.make_node


class _PowGelu(nn.Module):
    """The tanh form written out with ``torch.pow`` (as some model code does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = 0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3))
        return 0.5 * x * (1 + torch.tanh(inner))


@pytest.mark.parametrize("act", [nn.GELU(approximate="tanh"), _PowGelu()],
                         ids=["nn_gelu_tanh", "pow"])
def test_exported_tanh_gelu_is_one_gelu_node_matching_onnxruntime(tmp_path: Path,
                                                                  act: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 8), act, nn.Linear(8, 3)).eval()
    path = export(model, (2, 4, 4), tmp_path / "g.onnx")
    imported = load_onnx(path)
    res = compare_with_onnxruntime(imported, path, 40, seed=7)
    assert res.max_rel_error <= 1e-5, res
    gelus = [n for n in capture(imported, (2, 4, 4)) if n.op == "gelu"]
    assert [n.attrs["approximate"] for n in gelus] == ["tanh"]
    assert "tanh" not in {n.op for n in capture(imported, (2, 4, 4))}


def _chain(kappa: float) -> list[object]:
    return [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("Mul", ["z", "z"], ["z2"]), N("Mul", ["z", "z2"], ["z3"]),
            N("Mul", ["k", "z3"], ["kz3"]), N("Add", ["z", "kz3"], ["s"]),
            N("Mul", ["beta", "s"], ["u"]), N("Tanh", ["u"], ["t"]),
            N("Add", ["one", "t"], ["t1"]), N("Mul", ["z", "t1"], ["zt"]),
            N("Mul", ["half", "zt"], ["h"])]


def _consts(kappa: float) -> dict[str, object]:
    import numpy as np

    f = np.float32
    return {"w": rand(6, 4, scale=2.0), "b": rand(6), "k": np.array(kappa, dtype=f),
            "beta": np.array(0.7978846, dtype=f), "one": np.array(1.0, dtype=f),
            "half": np.array(0.5, dtype=f)}


def test_hand_built_tanh_gelu_chain_imports_and_a_wrong_constant_is_not_gelu(
        tmp_path: Path) -> None:
    p = classifier(tmp_path, _chain(0.044715), (4,), "h", 6, _consts(0.044715))
    imported = load_onnx(p)
    assert compare_with_onnxruntime(imported, p, 40, seed=3).max_rel_error <= 1e-5
    assert "gelu" in {n.op for n in capture(imported, (4,))}
    # with another constant the chain is not GELU: it imports as what it computes, products
    # of two input-dependent tensors (``mul``) and a ``tanh``
    bad = classifier(tmp_path, _chain(0.05), (4,), "h", 6, _consts(0.05), name="bad.onnx")
    m = load_onnx(bad)
    assert compare_with_onnxruntime(m, bad, 40, seed=3).max_rel_error <= 1e-5
    kinds = {n.op for n in capture(m, (4,))}
    assert "gelu" not in kinds and {"mul", "tanh"} <= kinds


def test_pow_outside_the_tanh_gelu_pattern_is_refused_in_one_line(tmp_path: Path) -> None:
    import numpy as np

    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Pow", ["z", "two"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6,
                   {"w": rand(6, 4), "b": rand(6), "two": np.array(2.0, dtype=np.float32)})
    with pytest.raises(BoundkitError, match="Pow") as err:
        load_onnx(p)
    assert "\n" not in str(err.value)
