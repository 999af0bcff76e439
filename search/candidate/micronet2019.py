"""The MicroNet Challenge 2019 score (NeurIPS 2019, CIFAR-100 track), beside the seeds' formula
(:mod:`search.candidate.score`).

    score = parameter storage / 36.5 M + math operations / 10.49 B

36.5 M parameters and 10.49 B operations are WideResNet-28-10's, the track's baseline, so it scores 2.0. The counting
follows the challenge's scoring page and its published counting code (google-research, micronet_challenge/
counting.py):

- **storage**: a 32-bit parameter counts 1, a b-bit one b/32. A pruned tensor stores its non-zero values plus a
  1-bit mask of its full shape. A batch norm folded into the convolution before it leaves one bias per channel;
  one that follows no convolution (DenseNet's pre-activation) keeps a scale and a shift per channel.
- **operations**: a dot product over n non-zero weights is n multiplications and n - 1 additions, plus one addition
  for a bias; ReLU is one multiplication per element; a residual sum one addition per element; an unfolded batch
  norm one multiplication and one addition per element; average pooling over k values k - 1 additions and one
  multiplication per output (global pooling likewise); max pooling k - 1 comparisons, counted as additions.
  Concatenation, flattening and reshapes are free.
- **bits**: a multiplication of a weight by an activation counts max(qw, qa)/32, other multiplications (on
  activations) qa/32; additions accumulate in 32 bits and count 1. Parameters are stored at qw bits (weights of
  convolutions and linear layers) or 32 (biases, batch norm).
- **16-bit freebie**: a model with no part below 16 bits may count every 32-bit parameter and multiplication as
  16-bit; one part below 16 bits (qw or qa < 16) forfeits it.

The counts come from one forward pass of a batch of one through the pruned, unquantized model: fake quantization
only simulates the bits, which enter through qw and qa. Written here (not with ptflops) because the rules count
what ptflops does not: the mask bits, additions separately from multiplications, functional sums and pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from search.compress.compression import Compression

BASELINE_PARAMS = 36.5e6   # WideResNet-28-10 on CIFAR-100, the track's baseline
BASELINE_OPS = 10.49e9


@dataclass(frozen=True)
class Counts:
    """Parameter storage in 32-bit parameters; multiplications and additions in 32-bit operations."""

    params: float
    mults: float
    adds: float

    @property
    def ops(self) -> float:
        return self.mults + self.adds

    @property
    def score(self) -> float:
        return self.params / BASELINE_PARAMS + self.ops / BASELINE_OPS


@dataclass
class _Tally:
    weight_bits: float
    act_bits: float           # activations, and the weight-by-activation products: max(qw, qa)
    other_bits: float         # biases and batch norm parameters
    product_bits: float
    params: float = 0.0       # bits
    mults: float = 0.0        # bit-weighted
    adds: float = 0.0


def _bits(bits: int, freebie: bool) -> float:
    return 16.0 if freebie and bits >= 32 else float(bits)


class _Counter(TorchFunctionMode):
    """Counts the operations of one forward pass by the functions it calls (modules and functionals alike)."""

    def __init__(self, tally: _Tally):
        super().__init__()
        self.t = tally
        self.conv_outputs: dict[int, torch.Tensor] = {}  # a batch norm on a convolution's output folds into it
        # (the tensors are kept so that no later tensor can reuse a freed one's id)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t = self.t
        if func in (F.conv2d, torch.conv2d):
            w = args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self._dot(w, out.numel(), w[0].numel(), bias)
            self.conv_outputs[id(out)] = out
        elif func in (F.linear, torch._C._nn.linear):
            w = args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self._dot(w, out.numel(), w.shape[1], bias)
        elif func in (F.batch_norm, torch.batch_norm):
            x = args[0]
            channels = x.shape[1]
            if self.conv_outputs.get(id(x)) is x:  # folded: the convolution gains a bias
                t.params += channels * t.other_bits
                t.adds += 32 * out.numel()
            else:                           # a scale and a shift
                t.params += 2 * channels * t.other_bits
                t.mults += t.act_bits * out.numel()
                t.adds += 32 * out.numel()
        elif func in (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            t.mults += t.act_bits * out.numel()
        elif func in (torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__iadd__, torch.Tensor.add_,
                      torch.Tensor.__radd__):
            a, b = args[0], args[1]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel() > 1:
                t.adds += 32 * out.numel()
        elif func in (F.adaptive_avg_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
            window = args[0].numel() // out.numel()
            t.adds += 32 * (window - 1) * out.numel()
            t.mults += t.act_bits * out.numel()
        elif func in (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d):
            result = out[0] if isinstance(out, tuple) else out
            window = args[0].numel() // result.numel()
            t.adds += 32 * (window - 1) * result.numel()
        return out

    def _dot(self, w: torch.Tensor, outputs: int, fan_in: int, bias: torch.Tensor | None) -> None:
        t = self.t
        n = w.numel()
        nonzero = int(torch.count_nonzero(w))
        sparse = nonzero * t.weight_bits + n  # the non-zero values and a 1-bit mask
        if sparse < n * t.weight_bits:        # stored sparse where that is smaller (not for a stray zero)
            t.params += sparse
            length = fan_in * nonzero / n     # non-zero terms per dot product
        else:
            t.params += n * t.weight_bits
            length = fan_in
        t.mults += t.product_bits * length * outputs
        t.adds += 32 * (length - 1) * outputs
        if bias is not None:
            t.params += bias.numel() * t.other_bits
            t.adds += 32 * outputs


def count(model: nn.Module, qw: int = 32, qa: int = 32, input_size: tuple[int, ...] = (3, 32, 32),
          freebie: bool = True) -> Counts:
    """The challenge's counts for ``model`` (pruned, not fake-quantized) at ``qw``-bit weights and ``qa``-bit
    activations; ``freebie=False`` counts an unquantized model at 32 bits (as the baseline was counted)."""
    freebie = freebie and qw >= 16 and qa >= 16
    tally = _Tally(weight_bits=_bits(qw, freebie), act_bits=_bits(qa, freebie), other_bits=_bits(32, freebie),
                   product_bits=_bits(max(qw, qa), freebie))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Counter(tally):
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return Counts(params=tally.params / 32, mults=tally.mults / 32, adds=tally.adds / 32)


def count_candidate(model: nn.Module, compression: Compression,
                    input_size: tuple[int, ...] = (3, 32, 32)) -> Counts:
    """An untrained or trained ``model`` under ``compression``: its pruning applied (unstructured pruning zeroes
    exactly ``pu`` of the weights, so the counts do not depend on training), its bits counted."""
    from search.compress.steps import compress

    pruned = compress(model, Compression(ps=compression.ps, pu=compression.pu))
    return count(pruned, compression.qw, compression.qa, input_size)
