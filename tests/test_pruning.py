import copy
import math
from functools import cache

import pytest
import torch
from torch import nn

from search.candidate.complexity import count_nonzero_params, count_params, measure
from search.compress import channel_fraction, make_permanent, prune_structured, prune_unstructured, weight_sparsity
from search.errors import ConfigError
from search.models import build_model

# Small variants keep the file fast; the full-size models get one test each at the end.
SMALL = {
    "resnet20": {},
    "resnet18": {"width": 0.25},
    "densenet": {"growth_rate": 8, "blocks": [2, 2, 2]},
}
STRUCTURED = [(arch, groups, depthwise) for arch in SMALL for groups in (1, 2, 4) for depthwise in (False, True)]


def small(arch, groups=1, depthwise=False, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(arch, groups=groups, depthwise=depthwise, **{**SMALL[arch], **options})


@cache
def dense_counts(arch, groups, depthwise):
    return measure(small(arch, groups, depthwise))


def convs(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def shapes(model):
    return [(m.in_channels, m.out_channels, m.groups) for _, m in convs(model)]


def assert_valid(before, after, num_classes=10):
    """Every conv is a plain, valid conv; grouped convs keep their groups; the classes are kept."""
    old = dict(convs(before))
    for name, conv in convs(after):
        assert type(conv) is nn.Conv2d, name  # the stand-in class used while pruning is gone
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0, name
        assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size), name
        was = old[name]
        if was.groups > 1 and not was.groups == was.in_channels == was.out_channels:
            assert conv.groups == was.groups, name
    assert after.conv1.in_channels == 3
    assert after.fc.out_features == num_classes


def forward_backward(model, num_classes=10):
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Structured


@pytest.mark.parametrize("ps", [0.3, 0.5])
@pytest.mark.parametrize("arch,groups,depthwise", STRUCTURED)
def test_structured_pruning_shrinks_a_valid_model(arch, groups, depthwise, ps):
    model = small(arch, groups, depthwise)
    before = copy.deepcopy(model)
    assert prune_structured(model, ps) is model
    assert_valid(before, model)
    forward_backward(model)
    dense, pruned = dense_counts(arch, groups, depthwise), measure(model)
    assert pruned.params < dense.params and pruned.macs < dense.macs
    # A conv loses ps of its outputs and ps of its inputs, so params and MACs go roughly by (1-ps)² (a bit less
    # where the stem's RGB inputs and the classes stay).
    assert pruned.params < (1 - ps) * dense.params and pruned.macs < (1 - ps) * dense.macs
    # Kept fractions measured: resnet20 0.696-0.716 (ps=0.3), 0.500 (ps=0.5); resnet18 0.699-0.701 / 0.500;
    # densenet 0.694-0.719 / 0.500.
    assert channel_fraction(before, model) == pytest.approx(1 - ps, abs=0.03)


@pytest.mark.parametrize("arch,options,fraction", [
    ("resnet20", {"groups": 8}, 0.500),
    # groups == growth_rate: conv2 has one output per conv group, so only its inputs can go (see _not_depthwise)
    ("densenet", {"groups": 8}, 0.583),
    ("densenet", {"groups": 8, "depthwise": True}, 0.550),
    # grouped convs reading the concatenation: most groups are kept whole (see _is_safe)
    ("densenet", {"groups": 2, "bottleneck": False}, 0.875),
    # depthwise convs reading the concatenation tie the producers into one group (see _parts)
    ("densenet", {"depthwise": True, "bottleneck": False}, 0.500),
])
def test_structured_pruning_awkward_groupings_stay_valid(arch, options, fraction):
    model = small(arch, **options)
    before = copy.deepcopy(model)
    prune_structured(model, 0.5)
    assert_valid(before, model)
    forward_backward(model)
    assert measure(model).macs < measure(before).macs
    assert channel_fraction(before, model) == pytest.approx(fraction, abs=0.001)


@pytest.mark.parametrize("arch,options", [
    ("resnet20", {"groups": 4, "depthwise": True}),
    ("densenet", {"groups": 8}),
    ("densenet", {"depthwise": True, "bottleneck": False}),  # one torch-pruning group holds several producers
])
def test_structured_pruning_keeps_the_same_shapes_whatever_the_weights(arch, options):
    pruned = [shapes(prune_structured(small(arch, seed=seed, **options), 0.3)) for seed in (0, 1, 2)]
    assert pruned[0] == pruned[1] == pruned[2]


def label_channels(block):
    """Number the channels through the batch-norm biases (not used for ranking), to see which are kept."""
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.bias.copy_(torch.arange(bn.num_features, dtype=bn.bias.dtype))


def labels(bn) -> list[int]:
    return [int(b) for b in bn.bias]


@pytest.mark.parametrize("groups", [1, 2])
def test_structured_pruning_removes_the_filters_with_the_smallest_norm(groups):
    model = small("resnet20", groups=groups)
    block = model.layer1[0]  # conv1 makes 16 channels, read only by conv2; both read/make the residual stream
    label_channels(block)
    # small filters at positions 2 and 5 of each conv group (of 8 channels when groups=2)
    small_filters = [2, 5, 10, 13] if groups == 2 else [1, 4, 6, 11]
    with torch.no_grad():
        block.conv1.weight[small_filters] *= 1e-3
    before = copy.deepcopy(block)
    prune_structured(model, 0.25)
    kept = labels(block.bn1)
    assert kept == [i for i in range(16) if i not in small_filters]
    stream = labels(block.bn2)  # the residual channels kept: conv1's inputs, conv2's outputs
    # the weights kept are those of the channels kept; grouped convs index inputs inside their group
    inputs_of = {1: lambda idx: idx, 2: lambda idx: [i for i in idx if i < 8]}[groups]
    assert torch.equal(block.conv1.weight, before.conv1.weight[kept][:, inputs_of(stream)])
    assert torch.equal(block.conv2.weight, before.conv2.weight[stream][:, inputs_of(kept)])
    assert block.conv1.groups == block.conv2.groups == groups


def test_structured_pruning_of_zero_changes_nothing():
    model = small("resnet20", groups=2)
    state = copy.deepcopy(model.state_dict())
    assert prune_structured(model, 0) is model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("training", [True, False])
def test_structured_pruning_restores_the_mode(training):
    model = small("resnet20").train(training)
    prune_structured(model, 0.3)
    assert all(m.training == training for m in model.modules())


def test_structured_pruning_takes_an_example_input():
    model = small("resnet20")
    prune_structured(model, 0.5, example_input=torch.randn(2, 3, 32, 32))
    assert model.fc.in_features == 32


def test_structured_pruning_refuses_a_model_with_masks():
    model = small("resnet20")
    prune_unstructured(model, 0.5)
    with pytest.raises(ConfigError, match="before unstructured"):
        prune_structured(model, 0.3)


@pytest.mark.parametrize("arch,options,ps", [
    ("resnet18", {"groups": 8}, 0.5),
    ("densenet", {}, 0.3),
])
def test_structured_pruning_full_size(arch, options, ps):
    torch.manual_seed(0)
    model = build_model(arch, **options)
    before = copy.deepcopy(model)
    prune_structured(model, ps)
    assert_valid(before, model)
    dense, pruned = measure(before), measure(model)
    # resnet18 groups=8: 1,561,674 -> 394,538 params, 77,714,442 -> 20,179,466 MACs, fraction 0.500
    # densenet-BC-100: 769,162 -> 374,899 params, 296,482,918 -> 143,328,676 MACs, fraction 0.700
    assert pruned.params < (1 - ps) * dense.params and pruned.macs < (1 - ps) * dense.macs
    assert channel_fraction(before, model) == pytest.approx(1 - ps, abs=0.01)


# ---------------------------------------------------------------------------------------------------------------
# Unstructured


def masks(model):
    return {name: m.weight_mask.clone() for name, m in model.named_modules() if hasattr(m, "weight_mask")}


@pytest.mark.parametrize("pu", [0.2, 0.5, 0.8])
def test_unstructured_pruning_zeroes_the_fraction_pu(pu):
    model = small("resnet20")
    prune_unstructured(model, pu)
    assert weight_sparsity(model) == pytest.approx(pu, abs=0.01)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(masks(model)) == n_layers


def test_unstructured_pruning_of_a_channels_last_model():
    """A model trained in bf16 + channels_last is pruned like any other (global_unstructured views the weights)."""
    model = small("resnet20").to(memory_format=torch.channels_last)
    prune_unstructured(model, 0.5)
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)


def test_unstructured_pruning_is_global_by_magnitude():
    model = small("resnet20")
    threshold = torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                           if isinstance(m, (nn.Conv2d, nn.Linear))]).quantile(0.5)
    prune_unstructured(model, 0.5)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            pruned = m.weight_mask == 0
            assert (m.weight_orig.detach().abs()[pruned] <= threshold).all()
            assert (m.weight_orig.detach().abs()[~pruned] >= threshold).all()


def test_pruned_weights_stay_zero_through_training():
    model = small("resnet20")
    prune_unstructured(model, 0.5)
    kept = masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        optimizer.zero_grad()
        forward_backward(model)
        for m in model.modules():
            if hasattr(m, "weight_orig"):
                m.weight_orig.grad += 1.0  # a nonzero gradient on the pruned weights too
        optimizer.step()
    model(torch.randn(1, 3, 32, 32))  # the forward pre-hooks recompute weight = weight_orig * mask
    for name, m in model.named_modules():
        if name in kept:
            pruned = kept[name] == 0
            assert (m.weight_orig.detach()[pruned] != 0).any()  # the optimizer moved them ...
            assert (m.weight.detach()[pruned] == 0).all()        # ... and the mask still zeroes them
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)


def test_make_permanent_bakes_the_masks_in():
    model = small("resnet20")
    params, nonzero = count_params(model), count_nonzero_params(model)
    prune_unstructured(model, 0.5)
    n_pruned = sum(int((mask == 0).sum()) for mask in masks(model).values())
    assert count_params(model) == params
    assert count_nonzero_params(model) == nonzero - n_pruned
    make_permanent(model)
    names = list(model.state_dict()) + [n for n, _ in model.named_parameters()]
    assert not any(n.endswith(("_orig", "_mask")) for n in names)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert count_params(model) == params
    assert count_nonzero_params(model) == nonzero - n_pruned
    make_permanent(model)  # nothing left to bake: no-op


def test_unstructured_pruning_of_zero_adds_no_masks():
    model = small("resnet20")
    prune_unstructured(model, 0)
    assert masks(model) == {}
    assert weight_sparsity(model) == 0


# ---------------------------------------------------------------------------------------------------------------
# Both, and bad input


def test_structured_then_unstructured():
    model = small("resnet20", groups=2)
    dense = measure(model)
    prune_structured(model, 0.3)
    prune_unstructured(model, 0.5)
    forward_backward(model)
    make_permanent(model)
    pruned = measure(model)
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert pruned.params < 0.7 * dense.params and pruned.macs < 0.7 * dense.macs
    assert pruned.nonzero_params < 0.6 * pruned.params


@pytest.mark.parametrize("value", [-0.1, 1, 1.5, math.nan, True, "0.3", None])
def test_bad_ratios_raise_config_error(value):
    model = small("resnet20")
    for prune_fn, name in ((prune_structured, "ps"), (prune_unstructured, "pu")):
        with pytest.raises(ConfigError, match=f"^{name} must be a number in") as err:
            prune_fn(model, value)
        assert "\n" not in str(err.value)
