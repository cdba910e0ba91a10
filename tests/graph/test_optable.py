"""The operator table (boundkit.graph.optable) against what capture, evaluation and the
rule registry do: each operator is declared once and the declarations are kept."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

import boundkit as bk
from boundkit.bounds import registry
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import optable
from boundkit.graph.capture import capture
from boundkit.graph.optable import FUNCTION_SIGS, METHOD_SIGS, OPS, OpSpec


def test_every_declared_rule_family_is_registered_and_every_builtin_rule_declared():
    assert registry.table_mismatches() == []


def test_a_declared_family_without_a_rule_fails_the_table_check(monkeypatch):
    fake = OpSpec("softsign_missing", "activation", optable.ops.relu,
                  rules={"crown": "boundkit.bounds.activation"})
    monkeypatch.setattr(optable, "OPS", {**OPS, fake.name: fake})
    problems = registry.table_mismatches()
    assert len(problems) == 1 and "softsign_missing" in problems[0]


def test_an_undeclared_builtin_rule_fails_the_table_check(monkeypatch):
    relu = OPS["relu"]
    trimmed = OpSpec(relu.name, relu.kind, relu.evaluate,
                     rules={k: v for k, v in relu.rules.items() if k != "crown"})
    monkeypatch.setattr(optable, "OPS", {**OPS, "relu": trimmed})
    problems = registry.table_mismatches()
    assert len(problems) == 1 and "'crown' rule for 'relu'" in problems[0]


def test_the_registry_loads_every_rule_module_the_table_names():
    registry.get_rule("relu", "sound")  # loads the built-in rules
    named = {m for s in OPS.values() for m in s.rules.values()}
    assert set(optable.rule_modules()) == named
    assert named <= set(sys.modules)


def test_every_capture_form_names_its_own_spec():
    for spec in OPS.values():
        for f, sig in spec.functions.items():
            assert FUNCTION_SIGS[f].op == spec.name
            assert FUNCTION_SIGS[f].form == (sig.form or spec.name)
        for name in spec.methods:
            assert METHOD_SIGS[name].op == spec.name
    for cls, op in optable.module_ops().items():
        assert any(c is cls or c == f"{cls.__module__}:{cls.__name__}"
                   for c in OPS[op].modules)


def test_every_operator_but_the_input_evaluates():
    missing = [s.name for s in OPS.values() if s.evaluate is None and s.kind != "input"]
    assert missing == []


def test_module_forms_capture_as_their_op_and_evaluate_as_the_module():
    """Each parameterless activation module class of the table, after a Linear layer,
    is captured as its op, and the graph's evaluation equals the model's forward."""
    torch.manual_seed(0)
    checked = 0
    for cls, op in optable.module_ops().items():
        if OPS[op].kind != "activation":
            continue
        try:
            layer = cls()
        except TypeError:
            continue
        model = nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 3)).double().eval()
        g = capture(model, (4,))
        assert [n.op for n in g.nodes] == ["input", "linear", op, "linear"]
        x = torch.randn(5, 4, dtype=torch.float64)
        out = g.activations(x)[g.logits.name]
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
        checked += 1
    assert checked >= 8


def test_unregistered_family_is_refused_by_name_not_by_a_crash():
    """log_softmax inside a network declares no rule family: a method refuses it by name."""
    model = nn.Sequential(nn.Linear(4, 4), nn.LogSoftmax(dim=1), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 4)
    with pytest.raises(UnsupportedLayerError, match="log_softmax"):
        bk.certify(model, x, "crown")


def test_every_context_reader_is_a_capture_method_and_mul_reads_its_operands():
    from boundkit.graph.capture import _Capture

    readers = {s.name: s.reader for s in OPS.values() if s.reader}
    assert {"add", "mul", "scale", "cat", "matmul", "permute", "select"} <= set(readers)
    for op, name in readers.items():
        assert callable(getattr(_Capture, name, None)), (op, name)

    class Forms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = self.a(x)
            p = torch.mul(input=h, other=torch.sigmoid(h))  # two computed operands
            q = h.multiply(2.5)  # a constant operand
            return self.o(p.mul(q) * 0.5)

    g = capture(Forms().eval(), (4,))
    assert [n.op for n in g.nodes if n.op in ("mul", "scale")] == ["mul", "scale", "mul",
                                                                    "scale"]
    assert all(FUNCTION_SIGS[f].op == "mul" for f in (torch.mul, torch.multiply))
    assert METHOD_SIGS["mul_"].op == "mul" and METHOD_SIGS["div"].op == "scale"
