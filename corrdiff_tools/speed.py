"""Hot-path levers: each one measured in ``bench/RESULTS.md``, each one tested for results.

Everything here leaves CorrDiff's numbers bitwise unchanged in float32 on a CPU except
``compile_networks``, which is opt-in (``--compile``) because Inductor fuses element-wise
arithmetic and so rounds differently (differences of about 3e-8 in a normalised field).

What we found, profiling one diffusion call of a narrow published-depth net on a 2-core
CPU (``bench/RESULTS.md`` has the figures):

* Convolution is under half the time. physicsnemo's inference-mode ``GroupNorm`` is
  about a third: it computes ``mean`` and ``var`` and then four element-wise passes, each
  allocating a new activation-sized tensor.
* Those activations are 25-100 MB. glibc serves allocations above its mmap threshold
  (at most 32 MB by default) with fresh ``mmap`` calls, so every one of them page-faults
  its memory in again and ``munmap`` hands it back on free. Raising the threshold and
  turning off trimming keeps that memory in the heap for reuse: about 1.4x per call,
  with nothing about the arithmetic changed.
* ``channels_last`` (which earth2studio's wrapper uses) is *slower* on CPU here (oneDNN
  reorders every layer) and rounds differently, so we keep the default layout on CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from earth2studio.models.dx import CorrDiffTaiwan

logger = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_host_allocator() -> bool:
    """Keep large freed blocks in glibc's heap instead of unmapping them (Linux only).

    Returns whether the allocator was tuned. Resident memory then stays at its peak
    until the process exits instead of falling between calls; the peak itself is the same.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = (
        (_M_MMAP_THRESHOLD, 1 << 30),  # serve blocks up to 1 GiB from the heap
        (_M_TRIM_THRESHOLD, (1 << 31) - 1),  # never give the heap top back mid-run
        (_M_TOP_PAD, 1 << 28),  # grow the heap 256 MiB at a time
    )
    return all(mallopt(param, value) == 1 for param, value in settings)


def _group_norm_inplace(self: Any, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode physicsnemo ``GroupNorm.forward`` with one allocation instead of four.

    ``self`` is a physicsnemo ``GroupNorm`` carrying the ``_physicsnemo_forward`` that
    :func:`use_inplace_group_norm` saved on it, which no static type describes (hence Any).

    The same operations in the same order on the same values (so the same roundings):
    ``((x - mean) * rsqrt(var + eps)) * weight + bias``, where ``mean`` and ``var`` are
    reduced over each group exactly as physicsnemo does (``Tensor.var`` is the unbiased
    estimator there; the training path uses ``group_norm``'s biased one, a difference of
    order 1/N that we leave as the published model was evaluated with it).
    """
    import torch

    if self.training:
        return self._physicsnemo_forward(x)
    weight, bias = self.weight, self.bias
    if not self.amp_mode and weight.dtype != x.dtype:
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    batch, channels, height, width = x.shape
    # A view in both layouts: channels are split in place (stride 1 in channels_last).
    groups = x.view(batch, self.num_groups, channels // self.num_groups, height, width)
    mean = groups.mean(dim=[2, 3, 4], keepdim=True)
    var = groups.var(dim=[2, 3, 4], keepdim=True)
    out = torch.sub(groups, mean)  # keeps x's layout, so the view back is free too
    out.mul_((var + self.eps).rsqrt())
    out = out.view(batch, channels, height, width)
    out.mul_(weight.view(1, channels, 1, 1)).add_(bias.view(1, channels, 1, 1))
    if self.act_fn is not None:
        out = self.act_fn(out)
    return out


def use_inplace_group_norm(net: torch.nn.Module) -> int:
    """Give every physicsnemo ``GroupNorm`` in ``net`` the in-place eval forward.

    Returns the number of layers changed. Inputs in a layout other than contiguous or
    ``channels_last`` keep physicsnemo's own path.
    """
    from physicsnemo.nn.module.group_norm import GroupNorm

    changed = 0
    layer: Any  # gains attributes that no static type describes
    for layer in net.modules():
        if type(layer) is GroupNorm and not hasattr(layer, "_physicsnemo_forward"):
            layer._physicsnemo_forward = layer.forward
            layer.forward = types.MethodType(_dispatch_group_norm, layer)
            changed += 1
    return changed


def _dispatch_group_norm(self: Any, x: torch.Tensor) -> torch.Tensor:
    import torch

    # Under autocast (--precision bf16) physicsnemo's own path: its float32 weights then
    # promote the result to float32, which the in-place multiply would not.
    layout_ok = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if not self.amp_mode and x.dim() == 4 and layout_ok:
        return _group_norm_inplace(self, x)
    return self._physicsnemo_forward(x)


def prefer_layout(net: torch.nn.Module, gpu: bool) -> torch.nn.Module:
    """Weights in the memory layout that is fastest on the device.

    earth2studio's ``load_model`` converts both networks to ``channels_last``, which suits
    GPU tensor cores. On a CPU it is slower (oneDNN reorders around every convolution:
    about 4.3 s against 3.0 s per small-width call on 2 cores), so there we convert back
    to physicsnemo's own contiguous layout. The two layouts differ in float32 rounding
    only (oneDNN sums in another order), and the contiguous one is how physicsnemo builds
    and tests its networks.
    """
    import torch

    if gpu:
        return net
    return net.to(memory_format=torch.contiguous_format)


def zero_churn_noise(x: torch.Tensor) -> torch.Tensor:
    """The sampler's stochastic-churn noise when ``S_churn`` is 0: a scalar zero.

    physicsnemo's deterministic sampler draws ``randn_like(x)`` every step (a full float64
    tensor from the global generator) and multiplies it by a coefficient that is exactly
    0 without churn. A 0-d zero gives the same sum, bitwise, for the price of nothing.
    """
    return x.new_zeros(())


def compile_networks(model: CorrDiffTaiwan) -> None:
    """``torch.compile`` both networks in place (opt-in ``--compile``).

    The first call of each distinct input shape compiles: minutes on a CPU (about 150 s
    for the small width on 2 cores), tens of seconds on a GPU. Results match to rounding,
    not bitwise.
    """
    import torch

    model.regression_model = torch.compile(model.regression_model)
    model.residual_model = torch.compile(model.residual_model)
