"""Quantization-aware training: fake-quantized weights and activations with straight-through gradients.

``quantize_model(model, qw, qa)`` changes a model in place:

- every ``nn.Conv2d`` / ``nn.Linear`` becomes a :class:`QuantConv2d` / :class:`QuantLinear`. Only the class is
  swapped, so the parameters, the state_dict keys and any ``torch.nn.utils.prune`` hooks stay as they were, and
  ``isinstance(m, nn.Conv2d)`` still holds (ptflops and :mod:`search.candidate.complexity` count it as a conv). The
  forward
  computes with the weight fake-quantized to ``qw`` bits: symmetric, one scale per output channel.
- every :class:`search.models.layers.Act` becomes a :class:`QuantAct`: ReLU, then unsigned fake-quantization to
  ``qa`` bits over ``[0, range]`` with one range per tensor.

All conv and linear weights are quantized, the stem conv and the classifier too, because the score charges every
weight at ``qw`` bits. Biases and batch-norm stay float: at deployment they are folded into the int32 accumulator
and the requantization step.

The activation range is a running EMA of the batch max, kept in a buffer and updated in training mode (like
batch-norm statistics). We use this instead of a learned PACT clip so that the model's parameters stay exactly
those of the float model, and so that parameter counts and the score do not change. The buffer is used as is in
eval mode.

Gradients are straight-through: the forward value is the quantized tensor, and the gradient goes to the float
tensor as if quantization were the identity. For activations the gradient is zero where the input was clipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from search.compress.compression import ACTIVATION_BITS, WEIGHT_BITS, Compression
from search.errors import ConfigError
from search.models.layers import Act

__all__ = [
    "QuantAct", "QuantConv2d", "QuantLinear", "bake_weights", "fake_quantize_activation", "fake_quantize_weight",
    "quantization_of", "quantize_model",
]


# --- the fake-quantizers (scriptable and traceable: branches only on the Python int `bits`) ---

def _straight_through(quantized: Tensor, x: Tensor) -> Tensor:
    """``quantized`` in the forward pass, the gradient of ``x`` in the backward pass.

    ``x - x.detach()`` is exactly zero, so the value is exactly ``quantized``. ``x + (q - x).detach()`` would be
    off by rounding error and could add distinct values.
    """
    return quantized.detach() + (x - x.detach())


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """Reshape (C,) to (C, 1, ...) so that it broadcasts against a weight with ``ndim`` dims."""
    return v.reshape([-1] + [1] * (ndim - 1))


def _round_symmetric(w: Tensor, bits: int) -> Tensor:
    levels = 2 ** (bits - 1) - 1
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    # An all-zero channel (pruned away) would divide 0 by 0. Give it scale 1: its zeros round to zero anyway.
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    scale = _per_channel(amax / levels, w.dim())
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def _binarize(w: Tensor) -> Tensor:
    """BinaryConnect / XNOR-Net: sign(w) times the mean |w| of the output channel.

    Exact zeros stay zero (``torch.sign(0) = 0``), so weights removed by pruning stay removed. The scale is the
    mean over the non-zero weights, which is the least-squares scale for the weights that remain. A dense weight
    has no exact zeros, so it gets exactly two values per channel, ±mean|w|.
    """
    flat = w.reshape(w.shape[0], -1)
    nonzero = (flat != 0).sum(dim=1).clamp_min(1)
    scale = flat.abs().sum(dim=1) / nonzero
    return torch.sign(w) * _per_channel(scale, w.dim())


def _quantize_weight(w: Tensor, bits: int) -> Tensor:
    if bits >= 32:
        return w
    # Round in float32 even when the weight is half/bf16, then cast back.
    wf = w.float()
    target = wf.detach()  # no autograd graph through the rounding: the gradient is straight-through anyway
    if bits == 16:
        q = target.half().float()
    elif bits == 1:
        q = _binarize(target)
    else:
        q = _round_symmetric(target, bits)
    # Identity gradient for every width, 1 bit included. BinaryConnect's |w| <= 1 gradient clip is left out: with
    # a mean|w| scale and conv weights of order 0.1, it would almost never take effect.
    return _straight_through(q, wf).to(w.dtype)


def _quantize_activation(x: Tensor, bits: int, max_value: Tensor) -> Tensor:
    if bits >= 32:
        return F.relu(x)
    xf = x.float()  # under autocast x may be bf16: round in float32, cast back at the end
    if bits == 16:
        y = F.relu(xf)
        q = y.detach().half().float()
    else:
        r = max_value.detach().float().clamp_min(1e-8)  # never 0: the scale divides by it
        y = torch.minimum(F.relu(xf), r)  # clipped: zero gradient above the range
        scale = r / (2 ** bits - 1)
        q = torch.round(y.detach() / scale) * scale  # 2^bits levels: 0, scale, ..., (2^bits - 1)·scale
    return _straight_through(q, y).to(x.dtype)


# --- public functions ---

def fake_quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Fake-quantize a weight with one scale per output channel (dim 0), using a straight-through gradient.

    bits = 2, 4 or 8: symmetric rounding to the integers in ±(2^(bits-1) - 1) times max|w| / (2^(bits-1) - 1).
    bits = 1: sign(w) · mean|w| (exact zeros stay zero). bits = 16: fp16 rounding. bits = 32: the identity.
    """
    if bits not in WEIGHT_BITS or isinstance(bits, bool):
        raise ConfigError(f"weight bits must be one of {', '.join(map(str, WEIGHT_BITS))}, got {bits!r}")
    return _quantize_weight(w, bits)


def fake_quantize_activation(x: Tensor, bits: int, max_value: Tensor | float) -> Tensor:
    """ReLU, then unsigned fake-quantization to ``bits`` over [0, max_value], using a straight-through gradient.

    bits = 2, 4 or 8: 2^bits levels, with inputs above ``max_value`` clipped (and given zero gradient).
    bits = 16: fp16 rounding of the ReLU. bits = 32: plain ReLU.
    """
    if bits not in ACTIVATION_BITS or isinstance(bits, bool):
        raise ConfigError(f"activation bits must be one of {', '.join(map(str, ACTIVATION_BITS))}, got {bits!r}")
    return _quantize_activation(x, bits, torch.as_tensor(max_value, dtype=torch.float32, device=x.device))


# --- the modules ---

class _WeightBits:
    """What the weight-quantized layers share: ``weight_bits``, the quantized weight, and its repr. Listed before the
    torch layer in the bases, so ``super().__init__`` reaches the layer's (TorchScript compiles ``forward`` and the
    methods it calls, these included: tests/test_quantize.py scripts both layers)."""

    def __init__(self, *args, weight_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits = weight_bits

    def quantized_weight(self) -> Tensor:
        """The weight the forward computes with."""
        return _quantize_weight(self.weight, self.weight_bits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class QuantConv2d(_WeightBits, nn.Conv2d):
    """A Conv2d whose forward uses its weight fake-quantized to ``weight_bits`` bits.

    The forward reads ``self.weight`` at call time. A ``torch.nn.utils.prune`` pre-hook sets it to
    ``weight_orig * mask`` just before, so what gets quantized is the masked weight, and zeros stay zero.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightBits, nn.Linear):
    """A Linear whose forward uses its weight fake-quantized to ``weight_bits`` bits (see :class:`QuantConv2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantAct(Act):
    """ReLU followed by unsigned per-tensor fake-quantization to ``bits`` bits over [0, running_max].

    ``running_max`` is an EMA of the batch max, updated in training mode and used as is in eval mode. It is 0 until
    the first training batch. Until then each batch uses its own max, so a model that was quantized but never
    trained still computes sanely. A non-finite batch max leaves the buffer unchanged.
    """

    def __init__(self, bits: int = 8):
        super().__init__()
        self._setup(bits, torch.device("cpu"))

    def _setup(self, bits: int, device: torch.device) -> None:
        self.bits = bits
        self.register_buffer("running_max", torch.zeros((), device=device))

    def forward(self, x: Tensor) -> Tensor:
        if self.bits > 8:  # fp16 or off: no range needed
            return _quantize_activation(x, self.bits, self.running_max)
        batch_max = x.detach().float().amax()
        if self.training:
            self._track(batch_max)
        known = self.running_max.float()
        return _quantize_activation(x, self.bits, torch.where(known > 0, known, batch_max))

    def _track(self, batch_max: Tensor) -> None:
        with torch.no_grad():
            old = self.running_max.float()
            # EMA with the batch-norm momentum, 0.1; the first batch sets the range outright.
            new = torch.where(old > 0, 0.9 * old + 0.1 * batch_max, batch_max)
            self.running_max.copy_(torch.where(torch.isfinite(batch_max), new, old))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # A float model's checkpoint has no ranges. Let it load into a quantized model, with the ranges unset.
        key = prefix + "running_max"
        if key in missing_keys:
            missing_keys.remove(key)
            self.running_max.zero_()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


_QUANT_OF = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
_PLAIN_OF = {QuantConv2d: nn.Conv2d, QuantLinear: nn.Linear}


# --- model-level API ---

def quantize_model(model: nn.Module, qw: int, qa: int) -> nn.Module:
    """Make ``model`` quantization-aware in place, with weights at ``qw`` bits and activations at ``qa`` bits.

    Bits of 32 leave that side untouched, so ``qw = qa = 32`` changes nothing. Only modules of exactly the class
    ``nn.Conv2d``, ``nn.Linear`` or ``Act`` are converted. Call it again with the same bits and nothing happens;
    with other bits it raises :class:`ConfigError` (build the model afresh).
    """
    Compression(qw=qw, qa=qa)  # raises ConfigError for illegal bits
    qw, qa = int(qw), int(qa)  # Compression accepts 4.0 for 4
    current = quantization_of(model)
    if current == (qw, qa):
        return model
    if current != (32, 32):
        raise ConfigError(f"the model is already quantized with qw={current[0]}, qa={current[1]}; "
                          f"build a fresh model to quantize with qw={qw}, qa={qa}")
    weighted = [m for m in model.modules() if type(m) in _QUANT_OF] if qw < 32 else []
    acts = [m for m in model.modules() if type(m) is Act] if qa < 32 else []
    if qw < 32 and not weighted:
        raise ConfigError(f"qw={qw}: the model has no nn.Conv2d or nn.Linear to quantize")
    if qa < 32 and not acts:
        # The score would charge qa bits for activations that stay float.
        raise ConfigError(f"qa={qa}: the model has no search.models.layers.Act activations to quantize")
    for module in weighted:
        module.__class__ = _QUANT_OF[type(module)]
        module.weight_bits = qw
    device = _device_of(model)
    for module in acts:
        module.__class__ = QuantAct
        module._setup(qa, device)
    return model


def quantization_of(model: nn.Module) -> tuple[int, int]:
    """Return the (qw, qa) that ``model`` was quantized with, or (32, 32) if it was not.

    A model after :func:`bake_weights` still reports its qw.
    """
    qw, qa = set(), set()
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            qw.add(module.weight_bits)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and hasattr(module, "baked_weight_bits"):
            qw.add(module.baked_weight_bits)
        elif isinstance(module, QuantAct):
            qa.add(module.bits)
    if len(qw) > 1 or len(qa) > 1:
        raise ValueError(f"the model mixes bit widths: weights {sorted(qw)}, activations {sorted(qa)}")
    return (qw.pop() if qw else 32, qa.pop() if qa else 32)


def bake_weights(model: nn.Module) -> nn.Module:
    """Prepare a model for export, in place: store each quantized weight and make its layer a plain conv/linear.

    Each QuantConv2d/QuantLinear gets its weight replaced by the quantized value and becomes a plain
    ``nn.Conv2d``/``nn.Linear`` again, remembering its bits in ``baked_weight_bits``. The QuantAct modules stay,
    since activation quantization is part of the inference graph. Pruning masks must be made permanent first
    (``torch.nn.utils.prune.remove``); otherwise this raises ValueError.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    for name, module in layers:  # check all before changing any
        if _has_pruning(module):
            raise ValueError(f"bake_weights: layer {name or '<root>'!r} still has a pruning mask; make the pruning "
                             f"permanent first with torch.nn.utils.prune.remove(module, 'weight')")
    with torch.no_grad():
        for _, module in layers:
            bits = module.weight_bits
            module.weight.copy_(module.quantized_weight())
            module.__class__ = _PLAIN_OF[type(module)]
            del module.weight_bits
            module.baked_weight_bits = bits
    return model


def _has_pruning(module: nn.Module) -> bool:
    hooks = any(isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values())
    masks = any(name.endswith("_mask") for name, _ in module.named_buffers(recurse=False))
    return hooks or masks


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
