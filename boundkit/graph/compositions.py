"""Layers captured as exact compositions of boundkit's own nodes (``docs/theory/capture.md``
§1, "Layers captured as compositions of exact identities"): ``torch.maximum`` /
``torch.minimum`` and one-sided clamps, PReLU with one slope per channel, ``Conv1d`` and the
1-d poolings, zero padding, adaptive max pooling, GroupNorm / InstanceNorm, Tanhshrink,
Softmin, GLU, and their functional forms.

:class:`Compositions` is a part of the capture (:class:`boundkit.graph.capture._Capture`
inherits it): its readers add nodes through the capture's ``aux_node`` / ``add_node`` and
read shapes and constants through it. Every node they add has its own rules, so a
composition needs no proof beyond its identity, and the fidelity check compares its
evaluation with the model's on every call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from boundkit.errors import UnsupportedLayerError
from boundkit.graph.optable import positive_eps, same_or_valid_padding

#: the largest slope magnitude of a PReLU with one slope per channel: its composition
#: a z + (1 - a) relu(z) evaluates z > 0 to within about u |a| |z| (the fidelity check's
#: tolerance is far above that here, and far below it for slopes near 1e16)
MAX_PRELU_SLOPE = 1e6


#: functional forms of the layers captured as compositions (:meth:`Compositions.composite_call`)
COMPOSITE_FORMS = frozenset({"max_pool1d", "avg_pool1d", "adaptive_max_pool2d", "tanhshrink",
                             "softmin", "glu", "conv1d", "group_norm", "pad"})


class Compositions:
    """The capture's readers of the layers written as compositions (module docstring)."""

    def extremum(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        r"""``torch.maximum`` / ``torch.minimum`` (and the tensor methods) as the exact
        identities :math:`\max(a,b)=a+\mathrm{ReLU}(b-a)` and
        :math:`\min(a,b)=a-\mathrm{ReLU}(a-b)` (``docs/theory/linear_relaxation.md``
        §Maximum and minimum): an ``add`` (or, with a constant operand :math:`c`, an
        ``identity`` shifted by :math:`-c`) into a ``relu``, then the ``add`` or shifted
        ``identity`` named after the call. Every computed operand must have the output's
        shape (no broadcasting of a computed operand)."""
        x, y = a.get("input", a.get("self")), a["other"]
        live = [isinstance(v, torch.fx.Node) and v.name in self.names for v in (x, y)]
        if not any(live):
            raise UnsupportedLayerError(fx_node.name, op, why="no operand depends on the input")
        out = self.shape(fx_node)[1:]
        for v, is_live in zip((x, y), live):
            if is_live and tuple(self._sample_shape(v.name)) != tuple(out):
                raise UnsupportedLayerError(
                    fx_node.name, op,
                    why=f"a computed operand of shape {list(self._sample_shape(v.name))} is "
                    f"broadcast to {list(out)}: expand it first")
        if all(live):
            a_, b_ = x.name, y.name
            # max: a + relu(b - a); min: a - relu(a - b)
            first = (b_, a_) if op == "maximum" else (a_, b_)
            d = self.aux_node(fx_node, "diff", "add", list(first), out,
                              attrs={"coeffs": (1.0, -1.0), "repeat": (1, 1), "shift": None})
            r = self.aux_node(fx_node, "relu", "relu", [d], out)
            self.add_node(fx_node, "add", [a_, r],
                          attrs={"coeffs": (1.0, 1.0 if op == "maximum" else -1.0),
                                 "repeat": (1, 1), "shift": None})
            return
        h, c = (x, y) if live[0] else (y, x)
        c = self.sample_constant(fx_node, op, self.constant(fx_node, c), out)
        if not bool(torch.isfinite(c).all()):
            raise UnsupportedLayerError(fx_node.name, op, why="a constant operand is not finite")
        # max(h, c) = c + relu(h - c); min(h, c) = h - relu(h - c)
        d = self.aux_node(fx_node, "diff", "identity", [h.name], out, attrs={"shift": -c})
        r = self.aux_node(fx_node, "relu", "relu", [d], out)
        if op == "maximum":
            self.add_node(fx_node, "identity", [r], attrs={"shift": c})
        else:
            self.add_node(fx_node, "add", [h.name, r],
                          attrs={"coeffs": (1.0, -1.0), "repeat": (1, 1), "shift": None})

    def one_sided_clamp(self, fx_node: torch.fx.Node, a: dict[str, Any]) -> None:
        """``clamp(h, min=c)`` is :math:`\\max(h,c)`, the node ``relu`` itself for
        :math:`c=0`, and ``clamp(h, max=c)`` is :math:`\\min(h,c)` (:meth:`extremum`)."""
        h, lo, hi = a.get("input", a.get("self")), a["min"], a["max"]
        if hi is None and isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo == 0:
            self.add_node(fx_node, "relu", [h.name])
            return
        self.extremum(fx_node, "maximum" if hi is None else "minimum",
                      {"input": h, "other": lo if hi is None else hi})

    def prelu(self, fx_node: torch.fx.Node, src: str, weight: torch.Tensor) -> None:
        r"""PReLU :math:`g(z)=\max(z,0)+a\min(z,0)` with slope :math:`a` (one, or one per
        channel: axis 1 of the batched input). One slope is the node ``leaky_relu``; several
        are captured as the exact identity :math:`g(z)=a\odot z+(1-a)\odot\mathrm{ReLU}(z)`
        (two ``scale`` nodes and a ``relu`` into the ``add`` named after the call), whose
        relaxation is as tight as PReLU's own (``docs/theory/linear_relaxation.md``
        §PReLU)."""
        w = weight.detach().to(torch.float64).reshape(-1)
        if not bool(torch.isfinite(w).all()):
            raise UnsupportedLayerError(fx_node.name, "prelu", why="a slope is not finite")
        shape = tuple(self._sample_shape(src))
        if w.numel() == 1:
            self.add_node(fx_node, "leaky_relu", [src],
                          attrs={"negative_slope": float(w[0])})
            return
        if not shape or shape[0] != w.numel():
            raise UnsupportedLayerError(
                fx_node.name, "prelu",
                why=f"{w.numel()} slopes for an input of shape [N, "
                f"{', '.join(map(str, shape))}] (one per channel: axis 1)")
        if float(w.abs().max()) > MAX_PRELU_SLOPE:
            # a z + (1 - a) z cancels to z only to about u |a z| in floating point
            raise UnsupportedLayerError(
                fx_node.name, "prelu",
                why=f"a slope of magnitude {float(w.abs().max()):.3g}: a PReLU with one slope "
                f"per channel is supported for slopes of magnitude <= {MAX_PRELU_SLOPE:g}")
        a = w.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).contiguous()
        lin = self.aux_node(fx_node, "slope", "scale", [src], shape,
                            params={"factor": a}, attrs={"divide": False})
        r = self.aux_node(fx_node, "relu", "relu", [src], shape)
        # 1 - a is rounded once (exact for a float32 slope of magnitude >= 2^-29): the
        # scale rules charge u |1 - a| for it (``rounded``)
        rs = self.aux_node(fx_node, "relu_scaled", "scale", [r], shape,
                           params={"factor": 1.0 - a}, attrs={"divide": False, "rounded": True})
        self.add_node(fx_node, "add", [lin, rs],
                      attrs={"coeffs": (1.0, 1.0), "repeat": (1, 1), "shift": None})

    def composite_module(self, fx_node: torch.fx.Node, m: nn.Module, src: str) -> bool:
        """torch layers without a node kind of their own, captured as exact compositions of
        boundkit's nodes (``docs/theory/capture.md`` §1, layers captured as compositions):
        ``Conv1d``, ``MaxPool1d``, ``AvgPool1d`` as their 2-d twins on ``[N, C, 1, L]``;
        ``ZeroPad2d`` / ``ConstantPad2d(value=0)`` as a one-hot depthwise convolution;
        ``AdaptiveMaxPool2d`` whose output size divides the input's as a max pooling;
        ``Tanhshrink`` as ``x - tanh(x)``; ``Softmin`` as ``softmax(-x)``; ``GLU`` as the
        product of its first half and the sigmoid of its second; ``GroupNorm`` and
        ``InstanceNorm1d/2d`` (batch statistics) as LayerNorm over regrouped entries. Returns
        whether ``m`` was one of them (exact type: a subclass may compute something else)."""
        t = type(m)
        if t is nn.Conv1d:
            self.conv1d(fx_node, m, src)
        elif t in (nn.MaxPool1d, nn.AvgPool1d):
            self.pool1d(fx_node, m, src)
        elif t in (nn.ZeroPad2d, nn.ConstantPad2d):
            if t is nn.ConstantPad2d and float(m.value) != 0.0:
                raise UnsupportedLayerError(fx_node.name, "ConstantPad2d",
                                            why=f"value={m.value!r}: zero padding is supported")
            self.zero_pad2d(fx_node, tuple(int(v) for v in m.padding), src)
        elif t is nn.AdaptiveMaxPool2d:
            self.adaptive_max2d(fx_node, m, src)
        elif t is nn.Tanhshrink:
            shape = self._sample_shape(src)
            th = self.aux_node(fx_node, "tanh", "tanh", [src], shape)
            self.add_node(fx_node, "add", [src, th],
                          attrs={"coeffs": (1.0, -1.0), "repeat": (1, 1), "shift": None})
        elif t is nn.Softmin:
            if m.dim is None:
                raise UnsupportedLayerError(fx_node.name, "Softmin", why="dim=None: pass dim")
            shape = self._sample_shape(src)
            neg = self.aux_node(fx_node, "neg", "scale", [src], shape,
                                params={"factor": torch.tensor(-1.0, dtype=torch.float64)},
                                attrs={"divide": False})
            self.add_node(fx_node, "softmax", [neg], attrs={"dim": m.dim})
        elif t is nn.GLU:
            self.glu(fx_node, int(m.dim), src)
        elif t is nn.GroupNorm:
            self.group_norm(fx_node, src, int(m.num_groups), float(m.eps),
                            m.weight if m.affine else None, m.bias if m.affine else None)
        elif t in (nn.InstanceNorm1d, nn.InstanceNorm2d):
            if m.track_running_stats:  # eval statistics: a batch norm, as torch computes it
                raise UnsupportedLayerError(
                    fx_node.name, t.__name__, why="track_running_stats=True: use "
                    "nn.BatchNorm with those statistics (boundkit reads it as an affine map)")
            c = int(self._sample_shape(src)[0])
            self.group_norm(fx_node, src, c, float(m.eps),
                            m.weight if m.affine else None, m.bias if m.affine else None)
        else:
            return False
        return True

    def composite_call(self, fx_node: torch.fx.Node, form: str, a: dict[str, Any],
                       src: str) -> None:
        """The functional forms of the layers :meth:`composite_module` reads
        (:data:`COMPOSITE_FORMS`): the layer built from the call's arguments (weights must
        be constants), then read as the module is."""
        m: nn.Module
        if form == "pad":  # F.pad: zeros only (a module would not say which constant)
            self.pad_call(fx_node, a, src)
            return
        if form == "max_pool1d":
            m = nn.MaxPool1d(a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                             return_indices=bool(a["return_indices"]),
                             ceil_mode=bool(a["ceil_mode"]))
        elif form == "avg_pool1d":
            m = nn.AvgPool1d(a["kernel_size"], a["stride"], a["padding"], bool(a["ceil_mode"]),
                             bool(a["count_include_pad"]))
        elif form == "adaptive_max_pool2d":
            m = nn.AdaptiveMaxPool2d(a["output_size"], bool(a["return_indices"]))
        elif form == "tanhshrink":
            m = nn.Tanhshrink()
        elif form == "softmin":
            if a["dtype"] is not None:
                raise UnsupportedLayerError(fx_node.name, form, why=f"dtype={a['dtype']!r}")
            m = nn.Softmin(a["dim"])
        elif form == "glu":
            m = nn.GLU(a["dim"])
        elif form == "conv1d":
            m = self._conv1d_of_call(fx_node, a)
        else:  # group_norm
            self.group_norm(fx_node, src, int(a["num_groups"]), float(a["eps"]),
                            self._call_constant(fx_node, form, a["weight"]),
                            self._call_constant(fx_node, form, a["bias"]))
            return
        if not self.composite_module(fx_node, m, src):
            raise AssertionError(form)

    def _call_constant(self, fx_node: torch.fx.Node, form: str, v: Any) -> torch.Tensor | None:
        """A weight argument of a functional layer: ``None``, or a constant (float64)."""
        if v is None:
            return None
        if isinstance(v, torch.fx.Node) and v.name in self.names:
            raise UnsupportedLayerError(fx_node.name, form,
                                        why="its weights depend on the input")
        return self.constant(fx_node, v)

    def _conv1d_of_call(self, fx_node: torch.fx.Node, a: dict[str, Any]) -> nn.Conv1d:
        """``F.conv1d``'s arguments as an ``nn.Conv1d`` with those (constant) weights."""
        w = self._call_constant(fx_node, "conv1d", a["weight"])
        b = self._call_constant(fx_node, "conv1d", a["bias"])
        if w is None or w.dim() != 3:
            raise UnsupportedLayerError(fx_node.name, "conv1d", why="a weight [O, C/g, k] is "
                                        "expected")
        groups = int(a["groups"])
        m = nn.Conv1d(w.shape[1] * groups, w.shape[0], w.shape[2], stride=a["stride"],
                      padding=a["padding"], dilation=a["dilation"], groups=groups,
                      bias=b is not None).double()
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b.reshape(-1))
        return m

    def group_norm(self, fx_node: torch.fx.Node, src: str, groups: int, eps: float,
                   weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        r"""``GroupNorm`` (``InstanceNorm`` is one group per channel) on ``[N, C, *S]``:
        the per-sample ``[C, *S]`` regrouped as ``[G, (C/G)|S|]``, LayerNorm over the last
        axis (its ``center`` and ``layernorm`` nodes, no affine), back to ``[C, *S]``, then
        the per-channel ``scale`` :math:`\gamma` and shift :math:`\beta` (exact: the same
        means and variances over the same entries)."""
        shape = tuple(self._sample_shape(src))
        if not shape or groups < 1 or shape[0] % groups:
            raise UnsupportedLayerError(
                fx_node.name, "group_norm",
                why=f"{groups} groups of input [N, {', '.join(map(str, shape))}]: boundkit "
                "supports [N, C, ...] with C a multiple of the groups")
        k = math.prod(shape) // groups
        flat = self.aux_node(fx_node, "groups", "reshape", [src], (groups, k))
        centre = self.aux_node(fx_node, "centre", "center", [flat], (groups, k),
                               target="group norm centring", attrs={"normalized_shape": (k,)})
        ln = self.aux_node(fx_node, "normed", "layernorm", [centre], (groups, k),
                           params={"weight": torch.ones(k, dtype=torch.float64),
                                   "bias": torch.zeros(k, dtype=torch.float64)},
                           attrs={"normalized_shape": (k,), "eps": positive_eps(fx_node.name,
                                                                                eps)})
        if weight is None and bias is None:  # no affine map: back to [C, *S], named after
            self.add_node(fx_node, "reshape", [ln])  # the call
            return
        out = self.aux_node(fx_node, "ungroup", "reshape", [ln], shape)
        per = (shape[0],) + (1,) * (len(shape) - 1)
        w = (weight.detach().double() if weight is not None
             else torch.ones(shape[0], dtype=torch.float64)).reshape(per)
        scaled = self.aux_node(fx_node, "scale", "scale", [out], shape, params={"factor": w},
                               attrs={"divide": False})
        b = (bias.detach().double() if bias is not None
             else torch.zeros(shape[0], dtype=torch.float64)).reshape(per)
        self.add_node(fx_node, "identity", [scaled], attrs={"shift": b})

    def _per_sample_axis(self, fx_node: torch.fx.Node, op: str, dim: int, rank: int) -> int:
        """A dimension of the batched tensor (rank ``rank + 1``) as a per-sample axis."""
        d = dim + rank + 1 if dim < 0 else dim
        if not 1 <= d <= rank:
            raise UnsupportedLayerError(fx_node.name, op,
                                        why=f"dim={dim} is the batch's or out of range")
        return d - 1

    def conv1d(self, fx_node: torch.fx.Node, m: nn.Conv1d, src: str) -> None:
        r"""``Conv1d`` on ``[N, C, L]`` as ``conv2d`` with kernel :math:`1\times k` on
        ``[N, C, 1, L]`` (the same sums, exactly), between two reshapes. Padding
        ``"valid"`` is 0 and ``"same"`` half of :math:`d(k-1)` when that is even (torch pads
        the odd extra on one side: refused)."""
        if m.padding_mode != "zeros":
            raise UnsupportedLayerError(fx_node.name, "Conv1d", why=f"padding_mode="
                                        f"{m.padding_mode!r}; only zero padding is supported")
        k, s, d = int(m.kernel_size[0]), int(m.stride[0]), int(m.dilation[0])
        pad = (same_or_valid_padding(fx_node.name, m.padding, [k], [d])[0]
               if isinstance(m.padding, str) else int(m.padding[0]))
        params = {"weight": m.weight.detach().double().unsqueeze(2)}
        if m.bias is not None:
            params["bias"] = m.bias.detach().double()
        attrs = dict(stride=(1, s), padding=(0, pad), dilation=(1, d), groups=int(m.groups),
                     kernel_size=(1, k))
        self.lifted_1d(fx_node, "Conv1d", src, "conv2d", params, attrs)

    def pool1d(self, fx_node: torch.fx.Node, m: nn.Module, src: str) -> None:
        """``MaxPool1d`` / ``AvgPool1d`` as ``maxpool2d`` / ``avgpool2d`` with a window of
        height 1 on ``[N, C, 1, L]`` (padding on the length axis only: the same windows)."""
        k = int(m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0])
        st = m.stride if m.stride is not None else k
        s = int(st if isinstance(st, int) else st[0])
        p = int(m.padding if isinstance(m.padding, int) else m.padding[0])
        attrs: dict[str, Any] = dict(kernel_size=(1, k), stride=(1, s), padding=(0, p),
                                     ceil_mode=bool(m.ceil_mode))
        if isinstance(m, nn.MaxPool1d):
            if m.return_indices:
                raise UnsupportedLayerError(fx_node.name, "MaxPool1d", why="return_indices=True")
            d = int(m.dilation if isinstance(m.dilation, int) else m.dilation[0])
            attrs["dilation"] = (1, d)
            self.lifted_1d(fx_node, "MaxPool1d", src, "maxpool2d", {}, attrs)
            return
        attrs.update(count_include_pad=bool(m.count_include_pad), divisor_override=None)
        self.lifted_1d(fx_node, "AvgPool1d", src, "avgpool2d", {}, attrs)

    def lifted_1d(self, fx_node: torch.fx.Node, what: str, src: str, op2d: str,
                  params: dict[str, torch.Tensor], attrs: dict[str, Any]) -> None:
        """A 1-d layer on ``[N, C, L]`` as its 2-d twin on ``[N, C, 1, L]``: a ``reshape``,
        the 2-d node, and the ``reshape`` back named after the call."""
        shape = tuple(self._sample_shape(src))
        out = tuple(self.shape(fx_node)[1:])
        if len(shape) != 2 or len(out) != 2:
            raise UnsupportedLayerError(
                fx_node.name, what, why=f"its input has shape [N, {', '.join(map(str, shape))}]"
                "; boundkit supports it on [N, C, L]")
        up = self.aux_node(fx_node, "as_2d", "reshape", [src], (shape[0], 1, shape[1]))
        mid = self.aux_node(fx_node, "2d", op2d, [up], (out[0], 1, out[1]), params=params,
                            attrs=attrs, target=f"{fx_node.target} as {op2d}")
        self.check_input_rank(self.by_name[mid])
        self.add_node(fx_node, "reshape", [mid])

    def zero_pad2d(self, fx_node: torch.fx.Node, pad: tuple[int, ...], src: str) -> None:
        r"""Zero padding ``(left, right, top, bottom)`` of ``[N, C, H, W]`` as a depthwise
        ``conv2d`` with a one-hot kernel: per axis, symmetric padding
        :math:`P=\max(a,b)`, kernel length :math:`1+|a-b|` and the one at :math:`P-a`, so
        the output has :math:`n+a+b` entries, the :math:`j`-th being input :math:`j-a` or 0
        (exact: one product by 1 and zeros)."""
        shape = tuple(self._sample_shape(src))
        if len(shape) != 3:
            raise UnsupportedLayerError(fx_node.name, "ZeroPad2d",
                                        why="boundkit supports it on [N, C, H, W]")
        if len(pad) != 4 or min(pad) < 0:
            raise UnsupportedLayerError(fx_node.name, "ZeroPad2d",
                                        why=f"padding {pad}: four amounts >= 0 are supported")
        (left, right, top, bottom), c = pad, shape[0]
        kh, kw = 1 + abs(top - bottom), 1 + abs(left - right)
        ph, pw = max(top, bottom), max(left, right)
        w = torch.zeros(c, 1, kh, kw, dtype=torch.float64)
        w[:, 0, ph - top, pw - left] = 1.0
        self.add_node(fx_node, "conv2d", [src], params={"weight": w},
                      attrs=dict(stride=(1, 1), padding=(ph, pw), dilation=(1, 1), groups=c,
                                 kernel_size=(kh, kw)))
        self.check_input_rank(self.nodes[-1])

    def pad_call(self, fx_node: torch.fx.Node, a: dict[str, Any], src: str) -> None:
        """``F.pad(x, pad)`` of an image ``[N, C, H, W]`` with zeros (``mode="constant"``,
        value 0 or absent): ``pad`` of two (the width) or four amounts, as
        :meth:`zero_pad2d`."""
        pad, mode, value = a["pad"], a["mode"], a["value"]
        if mode != "constant" or value not in (None, 0, 0.0):
            raise UnsupportedLayerError(fx_node.name, "pad", why=f"mode={mode!r}, value="
                                        f"{value!r}: zero padding is supported")
        if not isinstance(pad, (tuple, list)) or len(pad) not in (2, 4) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in pad):
            raise UnsupportedLayerError(fx_node.name, "pad", why=f"pad={pad!r}: two or four "
                                        "integers are supported")
        self.zero_pad2d(fx_node, (*pad, 0, 0) if len(pad) == 2 else tuple(pad), src)

    def adaptive_max2d(self, fx_node: torch.fx.Node, m: nn.AdaptiveMaxPool2d, src: str) -> None:
        """``AdaptiveMaxPool2d`` whose output size divides the input's: the max pooling with
        kernel = stride = input / output (the windows torch's adaptive pooling takes then)."""
        if m.return_indices:
            raise UnsupportedLayerError(fx_node.name, "AdaptiveMaxPool2d",
                                        why="return_indices=True")
        shape = tuple(self._sample_shape(src))
        out = tuple(self.shape(fx_node)[1:])
        if len(shape) != 3 or any(o == 0 or i % o for i, o in zip(shape[1:], out[1:])):
            raise UnsupportedLayerError(
                fx_node.name, "AdaptiveMaxPool2d",
                why=f"output {list(out)} from input {list(shape)}: supported when the output "
                "size divides the input's")
        k = (shape[1] // out[1], shape[2] // out[2])
        self.add_node(fx_node, "maxpool2d", [src],
                      attrs=dict(kernel_size=k, stride=k, padding=(0, 0), dilation=(1, 1),
                                 ceil_mode=False))
        self.check_input_rank(self.nodes[-1])

    def glu(self, fx_node: torch.fx.Node, dim: int, src: str) -> None:
        r"""``GLU`` :math:`a\odot\sigma(b)` with :math:`a, b` the halves along ``dim``: two
        ``select`` nodes, a ``sigmoid`` and the product ``mul``."""
        shape = tuple(self._sample_shape(src))
        ax = self._per_sample_axis(fx_node, "GLU", dim, len(shape))
        if shape[ax] % 2:
            raise UnsupportedLayerError(fx_node.name, "GLU",
                                        why=f"dim {dim} has odd size {shape[ax]}")
        h = shape[ax] // 2
        half = tuple(h if i == ax else n for i, n in enumerate(shape))
        lead = (slice(None),) * ax
        a = self.aux_node(fx_node, "a", "select", [src], half,
                          attrs={"index": (*lead, slice(0, h))})
        b = self.aux_node(fx_node, "b", "select", [src], half,
                          attrs={"index": (*lead, slice(h, None))})
        g = self.aux_node(fx_node, "gate", "sigmoid", [b], half)
        self.add_node(fx_node, "mul", [a, g])

    def slope_activation(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        """The call forms of ``leaky_relu``: ``F.leaky_relu`` (its ``negative_slope``) and
        ``F.prelu`` / ``torch.prelu`` (a constant ``weight``: :meth:`prelu`)."""
        inputs = self.tensor_inputs([a.get("input", a.get("self"))])
        if len(inputs) != 1:
            raise UnsupportedLayerError(fx_node.name, op, why="its input is not the model's data")
        if op == "prelu":
            w = a["weight"]
            if isinstance(w, torch.fx.Node) and w.name in self.names:
                raise UnsupportedLayerError(fx_node.name, op,
                                            why="its slopes depend on the input")
            self.prelu(fx_node, inputs[0], self.constant(fx_node, w))
            return
        slope = a["negative_slope"]
        if isinstance(slope, (torch.fx.Node, bool)) or not isinstance(slope, (int, float)):
            raise UnsupportedLayerError(fx_node.name, op, why=f"negative_slope={slope!r}")
        self.add_node(fx_node, "leaky_relu", inputs, attrs={"negative_slope": float(slope)})
