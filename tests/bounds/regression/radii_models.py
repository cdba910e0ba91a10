"""The models and inputs of the radius regression fixture (``radii.json``).

Every zoo architecture at seed 0, plus a residual and a concatenating graph, each with three
fixed-seed random inputs in [0, 1]. ``make_fixture.py`` stores the radii of the scalar
methods; ``test_regression.py`` recomputes them.
"""

from __future__ import annotations

import torch
from torch import nn

from boundkit.models.zoo import ZOO, build_model

METHODS = ("sound", "sound-local", "peck2017")


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.fc2(self.act(self.fc1(x))))


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 4)
        self.act = nn.Tanh()
        self.out = nn.Linear(9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(torch.cat([self.a(x), self.b(x)], dim=1)))


def cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    out: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for name, entry in ZOO.items():
        model = build_model(name, seed=0)
        gen = torch.Generator().manual_seed(1)
        out[name] = (model, torch.rand((3, *entry.input_shape), generator=gen))
    for cls in (Residual, Cat):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls().eval()
        gen = torch.Generator().manual_seed(1)
        out[cls.__name__.lower()] = (model, torch.rand((3, 6), generator=gen))
    return out
