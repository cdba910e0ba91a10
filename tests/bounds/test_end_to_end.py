"""Both methods end to end on the thesis's networks (untrained zoo models, a few inputs)."""

from __future__ import annotations

import math

import pytest
import torch

import boundkit as bk
from boundkit.models import ZOO, build_model


@pytest.mark.parametrize(
    "name", ["mlp_iris", "mlp_mnist_tanh", "mlp_mnist", "lenet5", "lenet5_lrn1", "lenet5_lrn2",
             "lenet5_lrn3", "lenet5_bn"],
)
def test_both_methods_run_end_to_end_on_zoo_models(name):
    model = build_model(name, seed=0).eval()
    x = torch.rand(2, *ZOO[name].input_shape)
    sound = bk.certify(model, x)
    peck = bk.certify(model, x, method="peck2017")
    for cert in (sound, peck):
        assert cert.radius.shape == (2,) and cert.radius.dtype == torch.float64
        assert (cert.radius >= 0).all() and not torch.isnan(cert.radius).any()
        assert list(cert.trace)[0] == "input_1" or len(cert.trace) > 0
    torch.testing.assert_close(sound.label, model(x).argmax(1))
    # the trace starts at the input (equal to the radius) and never shrinks toward the output
    # for the sound method on these chains: every stage divides by a constant >= its slope
    first = next(iter(sound.trace.values()))
    torch.testing.assert_close(first, sound.radius)
    assert all(math.isfinite(float(v.max())) or float(v.max()) == math.inf
               for v in sound.trace.values())


def test_sound_runs_on_the_cifar_network():
    model = build_model("cifar_nin_small", seed=0).eval()
    x = torch.rand(2, *ZOO["cifar_nin_small"].input_shape)
    cert = bk.certify(model, x)
    assert (cert.radius > 0).all()
