"""Exact size and cost of a model: parameters, non-zero parameters, and MACs counted by ptflops.

MACs are module-level (conv, linear, batch-norm) through ptflops' pytorch backend with functional ops not counted,
the convention that reproduces the score tables of the design documents.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from search.errors import ConfigError

CIFAR_INPUT = (3, 32, 32)


@dataclass(frozen=True)
class Complexity:
    params: int
    nonzero_params: int
    macs: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0


def effective_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The weights the model computes with, one tensor per parameter.

    ``torch.nn.utils.prune`` keeps the dense tensor as ``<name>_orig`` and recomputes ``<name>`` as
    ``orig * mask``; for such a pair the masked tensor is the effective one.
    """
    tensors = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, f"{name[:-5]}_mask"):
                tensors.append(getattr(module, name[:-5]))
            else:
                tensors.append(p)
    return tensors


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in effective_parameters(model))


def count_nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in effective_parameters(model))


def count_macs(model: nn.Module, input_size: tuple[int, ...] = CIFAR_INPUT) -> int:
    """Multiply-accumulates of one forward pass of one input, counted by ptflops."""
    from ptflops import get_model_complexity_info  # imported here: it takes a second to import

    # ptflops binds counters onto every module and switches to eval mode: count on a copy, leave the model as it is.
    _detach_masked_weights(model)
    probe = copy.deepcopy(model)
    try:
        param = next(probe.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32

    def zeros(shape):
        return torch.zeros((1, *shape), device=device, dtype=dtype)

    log = io.StringIO()
    with torch.no_grad():
        macs, _ = get_model_complexity_info(
            probe, tuple(input_size), as_strings=False, print_per_layer_stat=False, input_constructor=zeros,
            ost=log, backend="pytorch", backend_specific_config={"count_functional": False},
            custom_modules_hooks=_subclass_hooks(probe),
        )
    if macs is None:  # ptflops swallows the forward's exception and prints it
        raise ConfigError(f"cannot count MACs: the model fails on an input of shape {tuple(input_size)}")
    return int(macs)


def _detach_masked_weights(model: nn.Module) -> None:
    """Recompute torch pruning's ``weight = weight_orig * mask`` without autograd history.

    After pruning or a training forward the masked weight is a non-leaf tensor, which ``deepcopy`` refuses; the next
    forward recomputes it anyway, so this changes no value.
    """
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))


def _subclass_hooks(model: nn.Module) -> dict:
    """ptflops looks modules up by exact type; count subclasses (e.g. a fake-quantized Conv2d) as their base."""
    from ptflops.pytorch_ops import MODULES_MAPPING

    hooks = {}
    for module in model.modules():
        kind = type(module)
        if kind not in MODULES_MAPPING and kind not in hooks:
            for base, hook in MODULES_MAPPING.items():
                if isinstance(module, base):
                    hooks[kind] = hook
                    break
    return hooks


def measure(model: nn.Module, input_size: tuple[int, ...] = CIFAR_INPUT) -> Complexity:
    return Complexity(count_params(model), count_nonzero_params(model), count_macs(model, input_size))
