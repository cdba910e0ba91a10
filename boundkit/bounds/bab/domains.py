r"""Domains and their split bookkeeping: a batch of subproblems as one typed record of
tensors (row = domain), selected, sliced and concatenated without a per-domain loop, and
the radius a domain's bounds certify."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from boundkit.bounds.numerics import round_down


@dataclass
class Domains:
    """A batch of domains (D rows): the sample each belongs to, its split sides per ReLU
    (relu name -> int8 [D, *shape]), the margins proven in an ancestor (bool [D, C]) and the
    warm start of its slopes and multipliers (relu name -> [D, C, *shape], or empty)."""

    sample: torch.Tensor
    signs: dict[str, torch.Tensor]
    done: torch.Tensor
    alpha: dict[str, torch.Tensor] = field(default_factory=dict)
    beta: dict[str, torch.Tensor] = field(default_factory=dict)
    #: bounds of the ReLU inputs known so far (an ancestor's, valid on a superset of the
    #: domain's set): node name -> [D, *shape] each, or empty
    lo: dict[str, torch.Tensor] = field(default_factory=dict)
    hi: dict[str, torch.Tensor] = field(default_factory=dict)
    #: splits made since the intermediate bounds were last recomputed [D], or None (0)
    age: torch.Tensor | None = None
    #: a radius each domain's set is proven for (an ancestor's bound), or None
    radius: torch.Tensor | None = None
    #: the one competing class each domain is about ([D]; then ``done`` is [D, 1]), or
    #: None: every margin of the sample
    cls: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.sample.numel())

    def rows(self, idx: torch.Tensor) -> Domains:
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[idx] for k, v in d.items()}
        return Domains(self.sample[idx], sel(self.signs), self.done[idx], sel(self.alpha),
                       sel(self.beta), sel(self.lo), sel(self.hi),
                       None if self.age is None else self.age[idx],
                       None if self.radius is None else self.radius[idx],
                       None if self.cls is None else self.cls[idx])

    def slice(self, a: int, b: int) -> Domains:
        """Rows ``a:b`` as views (no copy)."""
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[a:b] for k, v in d.items()}
        return Domains(self.sample[a:b], sel(self.signs), self.done[a:b], sel(self.alpha),
                       sel(self.beta), sel(self.lo), sel(self.hi),
                       None if self.age is None else self.age[a:b],
                       None if self.radius is None else self.radius[a:b],
                       None if self.cls is None else self.cls[a:b])

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        """The domains of ``parts`` in order. Split sides and multipliers missing from a
        part are zeros (no split, no term); warm slopes are kept only where every part has
        them."""
        parts = [p for p in parts if len(p)]

        def join(key: str, fill: bool) -> dict[str, torch.Tensor]:
            ds = [getattr(p, key) for p in parts]
            keys = set().union(*ds)
            if not fill and any(set(d) != keys for d in ds):
                return {}
            out = {}
            for k in keys:
                like = next(d[k] for d in ds if k in d)
                out[k] = torch.cat([d[k] if k in d else like.new_zeros(len(p), *like.shape[1:])
                                    for d, p in zip(ds, parts)])
            return out
        ages = [p.age if p.age is not None else torch.zeros_like(p.sample) for p in parts]
        rads = [p.radius if p.radius is not None else torch.zeros(len(p), dtype=torch.float64,
                                                                  device=p.sample.device)
                for p in parts]
        cls = None if any(p.cls is None for p in parts) else torch.cat([p.cls for p in parts])
        return Domains(torch.cat([p.sample for p in parts]), join("signs", True),
                       torch.cat([p.done for p in parts]), join("alpha", False),
                       join("beta", True), join("lo", False), join("hi", False),
                       torch.cat(ages), torch.cat(rads), cls)


def domain_radius(c: torch.Tensor, nu: torch.Tensor, closed: torch.Tensor, eps: torch.Tensor
                  ) -> torch.Tensor:
    r"""The radius a domain's bounds :math:`c_j-\varepsilon'\nu_j` (relaxation built for
    radius ``eps`` [D]) certify, over the margins not ``closed`` [D, C]:
    :math:`\min(\varepsilon,\min_j c_j/\nu_j)`, the quotient rounded down by 8 ulps
    (its one rounding), 0 where negative (as :func:`boundkit.bounds.crown.radius_step`)."""
    safe = torch.where(nu > 0, nu, torch.ones_like(nu))
    inf = torch.full_like(nu, math.inf)
    r = torch.where(nu > 0, c / safe, torch.where(c > 0, inf, -inf))
    phi = torch.where(closed, inf, r).min(1).values
    return torch.minimum(round_down(phi.clamp(min=0.0), 8), eps)

