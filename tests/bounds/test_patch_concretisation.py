"""The concretisation through a patch embedding (``boundkit/bounds/crown/patches.py``):
the same bound as the general path (up to rounding, never tighter than the exact value
allows), certificates no adversarial search beats, and where it does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.bounds.crown.patches import PatchConcretisation, find_head
from boundkit.bounds.crown.plan import plan_crown
from boundkit.bounds.crown.run import CrownRun
from boundkit.bounds.relaxation import LinearBounds
from boundkit.models.vit import TinyViT
from boundkit.testing import assert_sound


def _patch_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 4, stride=4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 16, 12), nn.ReLU(), nn.Linear(12, 5)).double().eval()


def _tiny_vit(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(TinyViT((3, 16, 16), patch=8, dim=8, heads=2, mlp=8,
                                 num_classes=4, cls=False)).double().eval()


def _images(n: int, seed: int, faces: int) -> torch.Tensor:
    """Images in [0, 1] with ``faces`` pixels per image exactly on a face (0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g, dtype=torch.float64)
    flat = x.view(n, -1)
    for i in range(n):
        idx = torch.randperm(flat.shape[1], generator=g)[:faces]
        flat[i, idx] = (torch.rand(faces, generator=g) < 0.5).double()
    return x


@pytest.mark.parametrize("make", [_patch_mlp, _tiny_vit])
@pytest.mark.parametrize("faces", [0, 3])
@pytest.mark.parametrize("box", [(0.0, 1.0), None])
def test_patch_path_matches_the_general_concretisation_to_rounding(make, faces, box) -> None:
    """A bound at the embedding's output concretised both ways: through the transposed
    convolution and the input-sized clamp (the general path), and from the Gram matrix and
    the face columns: the same c and nu up to rounding (about 1e-12 here)."""
    model = make(0)
    x = _images(3, 1, faces)
    x[2, 0, 0, 0] = 1.5  # a sample outside the box: the box does not constrain it
    graph = bk.capture(model, x[:1])
    run = CrownRun(graph, plan_crown(graph), x, box)
    ctx = run.intervals(torch.tensor([1e-3, 1e-2, 3e-2], dtype=torch.float64))
    head = PatchConcretisation.head(run)
    assert head is not None
    g = torch.Generator().manual_seed(faces)
    lb = LinearBounds(torch.randn(3, 7, *head.node.out_shape, generator=g,
                                  dtype=torch.float64),
                      torch.randn(3, 7, generator=g, dtype=torch.float64),
                      torch.rand(3, 7, generator=g, dtype=torch.float64) * 1e-9)
    new = PatchConcretisation().concretise(run, head, lb, ctx)
    assert new is not None
    (lb_in,) = run.plan.rules[head.node.name].backward(head.node, ctx, lb)
    old = run.at_input(lb_in, run.x0)
    assert torch.isfinite(new.c).all() and torch.isfinite(new.nu).all()
    assert torch.allclose(new.c, old.c, rtol=1e-10, atol=1e-10)
    assert torch.allclose(new.nu, old.nu, rtol=1e-10, atol=0)
    if faces and box is not None:  # the faces change the norm: both paths see them
        free = PatchConcretisation().concretise(
            CrownRun(graph, plan_crown(graph), x, None), head, lb, ctx)
        assert free is not None and (free.nu > new.nu).any()


def test_patch_path_is_taken_and_changes_nothing_for_crown_radii(monkeypatch) -> None:
    model = _tiny_vit(2)
    x = _images(2, 3, 2)
    graph = bk.capture(model, x[:1])
    head = find_head(graph, plan_crown(graph).rules, x.device)
    assert head is not None and head.node.op == "conv2d"
    calls = []
    own = PatchConcretisation.concretise

    def counted(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = own(self, *a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(PatchConcretisation, "concretise", counted)
    new = bk.certify(model, x, "crown").radius
    assert calls and all(calls)
    monkeypatch.undo()
    monkeypatch.setattr(PatchConcretisation, "head", staticmethod(lambda run: None))
    old = bk.certify(model, x, "crown").radius
    # rounding-level differences in the intervals can flip a discrete choice of a
    # relaxation (a plane or the interval) downstream: the radii agree closely, not exactly
    assert torch.allclose(new, old, rtol=2e-2)


def test_a_sample_with_many_face_pixels_takes_the_general_path_on_its_rows() -> None:
    """200 face pixels x 6 channels > 768 input entries: that sample's rows are the general
    path's, exactly; the other sample's rows stay the patch path's (equal to rounding)."""
    model = _patch_mlp(4)
    x = torch.cat([_images(1, 5, 200), _images(1, 6, 3)])
    graph = bk.capture(model, x[:1])
    run = CrownRun(graph, plan_crown(graph), x, (0.0, 1.0))
    ctx = run.intervals(torch.full((2,), 1e-2, dtype=torch.float64))
    head = PatchConcretisation.head(run)
    assert head is not None
    g = torch.Generator().manual_seed(7)
    z = torch.zeros(2, 3, dtype=torch.float64)
    lb = LinearBounds(torch.randn(2, 3, *head.node.out_shape, generator=g,
                                  dtype=torch.float64), z, z)
    new = PatchConcretisation().concretise(run, head, lb, ctx)
    (lb_in,) = run.plan.rules[head.node.name].backward(head.node, ctx, lb)
    old = run.at_input(lb_in, run.x0)
    assert new is not None
    assert torch.equal(new.c[0], old.c[0]) and torch.equal(new.nu[0], old.nu[0])
    assert torch.allclose(new.nu[1], old.nu[1], rtol=1e-10, atol=0)
    run.samples.x0 = x[:1]
    run.samples.in_box = run.samples.in_box[:1]
    assert PatchConcretisation().concretise(run, head, LinearBounds(
        lb.A[:1], z[:1], z[:1]), ctx) is None  # every sample heavy: the general path


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 6, 4, stride=2),  # overlapping windows
    nn.Conv2d(3, 6, 4, stride=4, padding=1),  # padded
    nn.Conv2d(3, 6, 5, stride=5),  # 16 is not a multiple of 5: a border is skipped
    nn.Conv2d(3, 60, 4, stride=4),  # wider than the input: no saving
])
def test_no_head_where_the_convolution_is_not_an_exact_tiling(conv) -> None:
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).double().eval()
    with torch.no_grad():
        width = model(torch.zeros(1, 3, 16, 16, dtype=torch.float64)).shape[1]
    model = nn.Sequential(model, nn.Linear(width, 3).double()).eval()
    graph = bk.capture(model, torch.zeros(1, 3, 16, 16, dtype=torch.float64))
    assert find_head(graph, plan_crown(graph).rules, torch.device("cpu")) is None


def test_no_head_when_the_input_has_another_reader() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 4, stride=4)
            self.fc = nn.Linear(6 * 16 + 3 * 16 * 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([torch.relu(self.conv(x)).flatten(1), x.flatten(1)], 1))

    model = Two().double().eval()
    graph = bk.capture(model, torch.zeros(1, 3, 16, 16, dtype=torch.float64))
    assert find_head(graph, plan_crown(graph).rules, torch.device("cpu")) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_certificates_through_a_patch_embedding_hold_against_search(seed) -> None:
    model = _tiny_vit(10 + seed) if seed else _patch_mlp(10)
    x = _images(3, 20 + seed, 4)
    out = assert_sound(model, x, "crown", attack_steps=40, exact=False)
    assert (out["certificate"].radius > 0).all()


def test_alpha_optimises_through_a_patch_embedding() -> None:
    """alpha's gradients pass the patch path (finite): its radii are at least crown's and
    hold against search."""
    model = _patch_mlp(30)
    x = _images(3, 31, 3)
    crown = bk.certify(model, x, "crown").radius
    out = assert_sound(model, x, "alpha", attack_steps=40, exact=False)
    alpha = out["certificate"].radius
    assert torch.isfinite(alpha).all()
    assert (alpha >= crown * (1 - 1e-6)).all()
