"""A constant class token in torch capture (``torch.cat([self.cls.expand(x.shape[0], -1, -1),
x], dim=1)``, ``self.cls.repeat(...)``, ``+ self.pos``) is the exact affine node
``cat_constant``, and a token read back (``z[:, 0]``, basic indexing) the exact node
``select``: both evaluate as torch does, certify with no adversarial example inside any ball
(``sound`` and ``crown``), and constants that are not one value broadcast over the batch, or
indices that are not basic, are refused naming the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.models.vit import TinyViT
from boundkit.testing import assert_crown_intervals_contain_samples, assert_sound


class Tokens(nn.Module):
    """Tokens [N, T, D] from a linear map, a constant token added the odd ways users write
    it, a select and a head."""

    def __init__(self, form: str, t: int = 2, d: int = 3) -> None:
        super().__init__()
        self.form, self.t, self.d = form, t, d
        self.a = nn.Linear(5, t * d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.dist = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, t + 2, d) * 0.3)
        self.o = nn.Linear(d * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.a(x)).reshape(-1, self.t, self.d)
        f, n = self.form, x.shape[0]
        if f == "expand":  # class token first, then positions
            z = torch.cat([self.cls.expand(x.shape[0], -1, -1), z], dim=1)
        elif f == "repeat_kw":
            z = torch.cat(tensors=(self.cls.repeat(x.size(0), 1, 1), z), dim=-2)
        elif f == "unpacked":
            b, _, d = z.shape
            z = torch.cat([self.cls.expand(b, 1, d), self.dist.expand(b, -1, -1), z], 1)
        elif f == "trailing":  # a token after the data
            z = torch.cat([z, self.dist.expand(n, -1, -1)], dim=1)
        elif f == "between":  # constants between and around two computed tensors
            z = torch.cat([self.cls.expand(n, -1, -1), z[:, :1], self.dist.expand(n, -1, -1),
                           z[:, 1:]], dim=1)
        elif f == "features":  # a constant channel along the last axis
            z = torch.cat([z, self.cls[:, :, :1].expand(n, self.t, 1)], dim=-1)[..., 1:]
        if f == "expand":
            z = z + self.pos[:, : self.t + 1]
        elif f == "repeat_kw":  # positions broadcast over the batch by hand, scaled
            z = torch.add(z, self.pos[:, 1:].expand(z.shape[0], -1, -1), alpha=0.5)
        elif f in ("unpacked", "between"):
            z = z + self.pos
        return self.o(torch.cat([z[:, 0], z[:, -1]], dim=1))


FORMS = ["expand", "repeat_kw", "unpacked", "trailing", "between", "features"]


@pytest.mark.parametrize("form", FORMS)
def test_constant_tokens_are_exact_and_certify_below_the_attacks(form: str) -> None:
    torch.manual_seed(3)
    model = Tokens(form).eval()
    x = torch.rand(3, 5)
    g = capture(model, x)
    ops = [n.op for n in g.nodes]
    assert "cat_constant" in ops and "select" in ops and "unknown" not in ops, ops
    with torch.no_grad():
        ref = model.double()(x.double())
    assert torch.allclose(g.activations(x)[g.output], ref, rtol=0, atol=1e-12)
    model.float()
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=40)
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)


@pytest.mark.parametrize("image,patch", [((1, 8, 8), 4), ((1, 4, 4), 4)])  # 4 or 1 patches
def test_vit_with_a_class_token_captured_from_torch_certifies_soundly(image, patch) -> None:
    torch.manual_seed(0)
    model = TinyViT(image=image, patch=patch, dim=8, depth=1, heads=2, mlp=8, num_classes=3,
                    cls=True).eval()
    with torch.no_grad():
        model.cls.normal_()
    x = torch.rand(2, *image)
    g = capture(model, x)
    ops = {n.op for n in g.nodes}
    assert {"cat_constant", "select"} <= ops and "unknown" not in ops, ops
    with torch.no_grad():
        ref = model.double()(x.double())
    assert torch.allclose(g.activations(x)[g.output], ref, rtol=0, atol=1e-12)
    model.float()
    for method in ("sound", "crown"):
        cert = assert_sound(model, x, method, exact=False, attack_steps=30)["certificate"]
        # sound's radius through attention is within rounding (about 1e-9 for the float64
        # model); with the float32 model's own rounding charged it is 0. crown's is not
        assert bool((cert.radius > 0).all()) or method == "sound"


class Bad(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form, self.a, self.o = form, nn.Linear(4, 6), nn.LazyLinear(2)
        self.cls = nn.Parameter(torch.randn(1, 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, n, f = self.a(x).reshape(-1, 2, 3), x.shape[0], self.form
        if f == "fixed_batch":  # a constant of the probe's batch size, not a broadcast
            c = torch.ones(3, 1, 3)
        elif f == "batch_scaled":
            c = self.cls.expand(n, -1, -1) * n
        elif f == "differs":
            c = torch.arange(n, dtype=torch.float64).reshape(n, 1, 1).expand(n, 1, 3)
        elif f == "random":
            c = torch.randn_like(self.cls.expand(n, -1, -1))
        else:
            c = self.cls.expand(n, -1, -1)
        if f == "index_batch":
            return self.o(z[0:1].flatten(1).expand(n, -1))
        if f == "index_tensor":
            return self.o(z[:, torch.tensor([0, 1])].flatten(1))
        if f == "index_computed":
            return self.o(z[:, z.shape[1] // 2])
        return self.o(torch.cat([c.to(z.dtype), z], 1).flatten(1))


@pytest.mark.parametrize("form,msg", [
    ("fixed_batch", "no batch axis"), ("batch_scaled", "changes with the batch size"),
    ("differs", "changes with the batch size"), ("random", "computed by"),
    ("index_batch", "batch dimension"), ("index_tensor", "only ints"),
    ("index_computed", "only ints")])
def test_constants_that_are_not_one_broadcast_value_and_odd_indices_are_refused(
        form: str, msg: str) -> None:
    model = Bad(form)
    model(torch.zeros(3, 4, dtype=torch.float32))  # materialise the lazy head
    with pytest.raises(UnsupportedLayerError, match=msg) as info:
        capture(model.eval(), (4,))
    assert "\n" not in str(info.value)
