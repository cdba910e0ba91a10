"""Samples outside a method's input box (issue #26): reported per sample, never silently.

``crown`` and ``alpha`` concretise their bounds over the L2 ball intersected with ``box``.
A sample outside the box gets status ``OUTSIDE_BOX``: its radius is the method's bound over
the whole ball (what ``box=None`` gives), kept, and ``reasons()`` says so with the radius
and the box."""

from __future__ import annotations

import pytest
import torch

import boundkit as bk
from boundkit.bounds.certificate import SampleStatus

from .conftest import tiny_mlp

MODEL = tiny_mlp()


@pytest.mark.parametrize("method", ["crown", "alpha"])
def test_samples_outside_the_box_are_reported_with_their_radius(method: str) -> None:
    box = (0.5, 0.6)
    x = torch.tensor([[0.55, 0.55, 0.55, 0.55],   # inside
                      [0.10, 0.55, 0.55, 0.55],   # one coordinate below
                      [0.55, 0.55, 0.90, 0.55],   # one above
                      [0.50, 0.59375, 0.50, 0.59375]])  # on the faces (exact in float32)
    cert = bk.certify(MODEL, x, method, box=box)
    free = bk.certify(MODEL, x, method, box=None)
    outside = torch.tensor([False, True, True, False])
    assert torch.equal(cert.status == SampleStatus.OUTSIDE_BOX, outside)
    assert torch.equal(cert.radius[outside], free.radius[outside])  # kept, not zeroed
    assert (cert.radius[outside] > 0).all()
    reasons = cert.reasons()
    for i in range(4):
        if outside[i]:
            assert "outside the method's input box [0.5, 0.6]" in reasons[i]
            assert f"radius {float(cert.radius[i]):.6g}" in reasons[i]
        else:
            assert reasons[i] == "certified by the method"
    assert cert.summary()["n_outside_box"] == 2.0
    assert "2 outside the box" in repr(cert)
    assert cert.to_dict()["status"] == ["OK", "OUTSIDE_BOX", "OUTSIDE_BOX", "OK"]


def test_the_whole_ball_radius_of_an_outside_sample_holds() -> None:
    """The radius kept for a sample outside the box is a certificate for the whole ball:
    no point of a random sweep inside it changes the class."""
    x = torch.tensor([[0.1, 0.9, 0.2, 0.7]])
    cert = bk.certify(MODEL, x, "crown", box=(0.5, 0.6))
    assert cert.status.tolist() == [SampleStatus.OUTSIDE_BOX]
    r = float(cert.radius[0])
    g = torch.Generator().manual_seed(0)
    d = torch.randn(20000, 4, generator=g)
    d = d / d.norm(dim=1, keepdim=True) * r * 0.999
    with torch.no_grad():
        labels = MODEL((x + d).float()).argmax(1)
    assert (labels == cert.label[0]).all()


def test_methods_without_a_box_report_nothing_of_the_kind() -> None:
    x = torch.tensor([[2.0, -1.0, 0.5, 0.5]])  # far outside [0, 1]
    cert = bk.certify(MODEL, x, "sound")
    assert cert.status.tolist() == [SampleStatus.OK]
