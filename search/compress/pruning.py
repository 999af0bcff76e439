"""Pruning: structured (whole channels removed, ``ps``) and global unstructured magnitude pruning (``pu``).

Structured pruning uses torch-pruning's dependency graph (DepGraph): removing an output channel of a conv also removes
what is coupled to it (batch-norm, the input channel of the next convs, the other branch of a residual add, the slice
of a DenseNet concatenation). We walk its pruning groups ourselves instead of calling ``tp.pruner.MagnitudePruner``:

- the channels kept are rounded to the nearest count per conv group; the pruner floors it, so a stage of 16
  channels in 4 conv groups would keep 8 of 16 at ps = 0.3 (we keep 12);
- channels are ranked by the L2 norm of the filters that make them (``MagnitudeImportance`` also mixes in the
  batch-norm scales and the input weights of the next convs);
- groups torch-pruning 1.6 would prune wrongly are worked around or left whole (:func:`_not_depthwise`,
  :func:`_is_safe`).

How many channels each layer keeps depends only on the architecture and ``ps``, never on the weights.

Unstructured pruning uses ``torch.nn.utils.prune``: the masks stay as forward pre-hooks while training goes on, and
:func:`make_permanent` bakes them in at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from search.errors import ConfigError

__all__ = ["channel_fraction", "make_permanent", "prune_structured", "prune_unstructured", "weight_sparsity"]

CIFAR_EXAMPLE_SHAPE = (1, 3, 32, 32)

# Pruning ops on a filter that makes the channel: conv / linear outputs. Depthwise convs only filter a channel made
# elsewhere, so their norms count only if a group has no other filter.
_FILTER_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_DEPTHWISE_FNS = (tp.prune_depthwise_conv_out_channels,)


def _check_ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1) (the fraction to prune), got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------------
# Structured pruning


def prune_structured(model: nn.Module, ps: float, example_input: torch.Tensor | None = None) -> nn.Module:
    """Remove the fraction ``ps`` of the output channels of every prunable channel group, lowest filter L2 norm first.

    In place; returns ``model``. The classifier's outputs (the classes) and the input channels are kept. In each
    group of coupled channels, ``round((1 - ps) · n)`` channels of ``n`` are kept (at least one), per conv group when
    grouped convs are involved, so every grouped conv stays valid. Groups that cannot be pruned safely are kept
    whole, so the achieved fraction can differ from ``ps``: :func:`channel_fraction` reports it.
    """
    ps = _check_ratio("ps", ps)
    if ps == 0:
        return model
    if has_masks(model):
        raise ConfigError("structured pruning must come before unstructured pruning (the model has pruning masks)")
    if example_input is None:
        example_input = torch.zeros(CIFAR_EXAMPLE_SHAPE, device=_device(model))
    was_training = model.training
    model.eval()
    try:
        with _not_depthwise(model) as customized:
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=customized, verbose=False)
            # Plan every group on the unpruned model, then prune: groups are disjoint, and get_pruning_group
            # re-maps the indices (e.g. concatenation offsets) to the model as it is at that point.
            plans = [_plan(graph, group, ps) for group in graph.get_all_groups(
                ignored_layers=_classifier(model), root_module_types=[nn.Conv2d, nn.Linear])]
            with torch.no_grad():
                for root, idxs in filter(None, plans):
                    graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs).prune()
    finally:
        model.train(was_training)
    return model


class _GroupedConv(nn.Conv2d):
    """Stand-in class, during pruning only, of a grouped conv with ``groups == out_channels < in_channels``."""


@contextmanager
def _not_depthwise(model: nn.Module) -> Iterator[dict]:
    """Make torch-pruning see grouped convs with ``groups == out_channels < in_channels`` as the convs they are.

    torch-pruning 1.6 takes every conv with ``groups == out_channels`` for depthwise (``tp.ops.module2type``) and
    ties its input channels to its outputs; for DenseNet with ``groups == growth_rate`` that breaks the conv. Its
    type-keyed ``customized_pruners`` is the way to pick the pruner of a layer, so while pruning these convs get a
    class of their own, pruned by the ordinary conv pruner (which handles ``groups`` right).
    """
    convs = [m for m in model.modules()
             if type(m) is nn.Conv2d and 1 < m.groups == m.out_channels < m.in_channels]
    for conv in convs:
        conv.__class__ = _GroupedConv
    try:
        yield {_GroupedConv: tp.pruner.function.PrunerBox[tp.ops.OPTYPE.CONV]}
    finally:
        for conv in convs:
            conv.__class__ = nn.Conv2d


def _plan(graph: tp.DependencyGraph, group, ps: float) -> tuple[nn.Module, list[int]] | None:
    """The root module of ``group`` and the root channel indices to remove, or None to keep the group whole."""
    if not _is_safe(graph, group):
        return None
    norms = _filter_norms(group)
    if norms is None:
        return None
    chunks = _conv_groups(group)
    parts = _parts(group, len(norms))
    if chunks > 1 and len(parts) > 1:
        return None  # a grouped conv reading concatenated producers side by side: no per-part count fits both
    drop = []
    for part in parts:
        drop += [part[i] for i in _drop(norms[part], chunks, ps)]
    return (group[0].dep.target.module, sorted(drop)) if drop else None


def _drop(norms: torch.Tensor, chunks: int, ps: float) -> list[int]:
    """Positions to remove from channels with these norms: ``round((1 - ps) · n)`` of ``n`` are kept (at least one).

    Grouped convs need the same number of channels in each of their groups: the channels are ``chunks`` equal
    chunks (one per conv group), the positions inside a chunk are ranked by their mean norm over the chunks, and the
    same positions go from every chunk (as torch-pruning's own pruners do).
    """
    if len(norms) % chunks:
        return []
    size = len(norms) // chunks
    keep = max(1, math.floor(size * (1 - ps) + 0.5 - 1e-9))  # nearest; a tie keeps the fewer channels
    ranked = torch.argsort(norms.view(chunks, size).mean(0), stable=True)
    return [int(i) + c * size for c in range(chunks) for i in ranked[: size - keep]]


def _parts(group, n: int) -> list[list[int]]:
    """The group's root channels split by the filters that make them.

    Usually one part: a single conv makes the channels, or several convs make the same channels (a residual sum).
    A depthwise conv reading a DenseNet concatenation ties the concatenated producers into one group; each
    producer is then its own part, pruned by ``ps`` on its own, so the counts kept do not depend on the weights.
    """
    parts = sorted({tuple(sorted(item.root_idxs)) for item in group if item.dep.handler in _FILTER_FNS})
    flat = [i for part in parts for i in part]
    if len(flat) != n or len(set(flat)) != n:
        return [list(range(n))]
    return [list(part) for part in parts]


def _filter_norms(group) -> torch.Tensor | None:
    """Per channel of the group: the squared L2 norm of the filters that make it, averaged over those filters.

    A residual stream is made by several convs (stem, the last conv of each block, projections); all count.
    """
    for fns in (_FILTER_FNS, _DEPTHWISE_FNS):
        total, count = None, None
        for item in group:
            if item.dep.handler not in fns:
                continue
            weight = item.dep.target.module.weight.detach()
            norms = weight[item.idxs].flatten(1).float().pow(2).sum(1)
            if total is None:
                n = len(group[0].idxs)
                total, count = torch.zeros(n, device=norms.device), torch.zeros(n, device=norms.device)
            root = torch.as_tensor(item.root_idxs, device=norms.device)
            total.index_add_(0, root, norms)
            count.index_add_(0, root, torch.ones_like(norms))
        if total is not None:
            return (total / count.clamp(min=1)).cpu()
    return None


def _conv_groups(group) -> int:
    """Into how many equal chunks the group's channels split: the lcm of the ``groups`` of its grouped convs."""
    chunks = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module):
            chunks = math.lcm(chunks, module.groups)
    return chunks


def _is_safe(graph: tp.DependencyGraph, group) -> bool:
    """Whether torch-pruning prunes every grouped conv of the group correctly.

    torch-pruning removes the same positions from each chunk of the *group's* channels, which matches a conv's
    groups only when the group covers all of that conv's channels in order. A grouped conv fed by a concatenation
    (DenseNet without bottleneck) sees several groups side by side and would end up with unequal conv groups. Such
    groups are kept whole, as are groups with a conv that torch-pruning takes for depthwise but is not (one that
    :func:`_not_depthwise` could not re-class). Both are structural: the same for any weights.
    """
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Conv2d) or module.groups == 1:
            continue
        if isinstance(graph.get_pruner_of_module(module), tp.pruner.function.DepthwiseConvPruner):
            if module.in_channels != module.out_channels:
                return False
            continue  # a true depthwise conv stays valid whatever channels go
        channels = module.out_channels if graph.is_out_channel_pruning_fn(item.dep.handler) else module.in_channels
        if list(item.idxs) != list(range(channels)) or list(item.root_idxs) != list(range(channels)):
            return False
    return True


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last ``nn.Linear``: its outputs are the classes and are never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def channel_fraction(before: nn.Module, after: nn.Module) -> float:
    """The fraction of conv output channels kept: total ``out_channels`` of the convs of ``after`` over ``before``.

    Pass an unpruned copy (``copy.deepcopy``) as ``before``.
    """
    total = sum(m.out_channels for m in before.modules() if isinstance(m, nn.Conv2d))
    kept = sum(m.out_channels for m in after.modules() if isinstance(m, nn.Conv2d))
    return kept / total if total else 1.0


# ---------------------------------------------------------------------------------------------------------------
# Unstructured pruning


def _prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_unstructured(model: nn.Module, pu: float) -> None:
    """Zero the fraction ``pu`` of all conv and linear weights with the smallest magnitude (one global threshold).

    The masks stay as forward pre-hooks: the optimizer updates ``weight_orig`` and every forward multiplies it by
    the mask, so pruned weights stay zero while training goes on. :func:`make_permanent` removes the masks.
    """
    pu = _check_ratio("pu", pu)
    if pu == 0:
        return
    # global_unstructured flattens the weights with view(), which fails on channels_last weights (a model trained in
    # bf16 + channels_last); the trainer makes the model channels_last again after compression.
    model.to(memory_format=torch.contiguous_format)
    params = [(m, "weight") for m in _prunable(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=pu)


def _masked_names(module: nn.Module) -> list[str]:
    """Names of the tensors of ``module`` that carry a ``torch.nn.utils.prune`` mask."""
    return [name[:-5] for name, _ in module.named_buffers(recurse=False)
            if name.endswith("_mask") and hasattr(module, f"{name[:-5]}_orig")]


def has_masks(model: nn.Module) -> bool:
    return any(_masked_names(m) for m in model.modules())


@contextmanager
def copyable(model: nn.Module):
    """``copy.deepcopy(model)`` inside works with pruning masks: the masked ``weight`` (``weight_orig · mask``,
    recomputed by each forward's pre-hook) is not a leaf tensor and cannot be deep-copied, so it is set aside
    meanwhile; a copy gets its own at its first forward."""
    saved = [(m, name, getattr(m, name)) for m in model.modules() for name in _masked_names(m)]
    for m, name, _ in saved:
        delattr(m, name)
    try:
        yield model
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def make_permanent(model: nn.Module) -> None:
    """Bake every pruning mask into its weight (``prune.remove``); the zeros stay, the masks and hooks go."""
    for module in model.modules():
        for name in _masked_names(module):
            prune.remove(module, name)


def _effective_weight(module: nn.Module) -> torch.Tensor:
    # Recompute orig * mask: ``module.weight`` is only refreshed by the next forward after an optimizer step.
    if "weight" in _masked_names(module):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the effective weights of all conv and linear modules."""
    weights = [_effective_weight(m) for m in _prunable(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    return zeros / total if total else 0.0
