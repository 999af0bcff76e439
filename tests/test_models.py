import pytest
import torch
from torch import nn

from search.errors import ConfigError
from search.models import build_model, list_models
from search.models.layers import DepthwiseSeparable

PARAMS = [
    ("resnet20", {}, 272_474),
    ("resnet18", {}, 11_173_962),
    ("resnet18", {"groups": 2}, 5_681_226),
    ("resnet18", {"groups": 8}, 1_561_674),
    ("resnet18", {"depthwise": True}, 1_439_626),
    ("densenet", {}, 769_162),  # DenseNet-BC-100, k=12: the paper's 0.8 M
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_three_archs():
    assert list_models() == ["densenet", "resnet18", "resnet20"]


def test_a_name_registered_twice_is_refused():
    from search.models.registry import register_model

    def resnet20():
        raise AssertionError("never built")

    with pytest.raises(ValueError, match=r"model 'resnet20' is already registered \(by search\.models\.resnet\."):
        register_model(resnet20)
    assert list_models() == ["densenet", "resnet18", "resnet20"]


@pytest.mark.parametrize("arch,kwargs,expected", PARAMS)
def test_parameter_counts(arch, kwargs, expected):
    assert n_params(build_model(arch, **kwargs)) == expected


def block_convs(model):
    """The 3×3 convs that are not the stem (the first conv of the network)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return convs[0], convs[1:]


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "densenet"])
def test_groups_apply_to_block_convs_only(arch):
    model = build_model(arch, groups=2)
    stem, blocks = block_convs(model)
    assert stem.groups == 1
    assert blocks and all(c.groups == 2 for c in blocks)
    one_by_one = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert one_by_one and all(c.groups == 1 for c in one_by_one)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "densenet"])
def test_depthwise_splits_each_block_conv(arch):
    dense = build_model(arch)
    model = build_model(arch, depthwise=True)
    stem, blocks = block_convs(model)
    assert stem.groups == 1
    assert all(c.groups == c.in_channels == c.out_channels for c in blocks)
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(separable) == len(block_convs(dense)[1])
    assert all(s.pointwise.kernel_size == (1, 1) for s in separable)


def test_depthwise_with_groups_groups_the_pointwise_conv():
    model = build_model("resnet20", depthwise=True, groups=4)
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparable)]
    assert all(s.pointwise.groups == 4 for s in separable)


@pytest.mark.parametrize("arch,kwargs", [
    ("resnet20", {}), ("resnet20", {"groups": 4, "width": 0.5}), ("resnet18", {"depthwise": True}),
    ("densenet", {"growth_rate": 8, "blocks": [2, 2, 2]}), ("densenet", {"bottleneck": False, "blocks": [3, 3]}),
    ("densenet", {"depthwise": True, "blocks": [2, 2, 2]}),
])
def test_forward_gives_logits(arch, kwargs):
    model = build_model(arch, num_classes=7, **kwargs)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()


def test_width_scales_channels():
    half = build_model("resnet20", width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 32
    double = build_model("densenet", width=2.0, blocks=[1])
    assert double.conv1.out_channels == 48  # 2k with k = 24


def test_densenet_options():
    model = build_model("densenet", growth_rate=8, blocks=[4, 4], compression=0.5)
    # stem 16, block 1: 16 + 4·8 = 48, transition to 24, block 2: 24 + 32 = 56
    assert model.fc.in_features == 56


@pytest.mark.parametrize("arch,kwargs,fragments", [
    ("resnet18", {"groups": 3}, ["groups=3", "layer1.0.conv1", "1, 2, 4, 8, 16, 32, 64"]),
    ("resnet20", {"groups": 32}, ["groups=32", "layer1.0.conv1", "legal groups", "1, 2, 4, 8, 16"]),
    ("densenet", {"groups": 8}, ["groups=8", "block1.0.conv2", "1, 2, 3, 4, 6, 12"]),
    ("resnet20", {"depthwise": True, "groups": 5}, ["pointwise", "layer1.0.conv1"]),
    ("resnet20", {"width": 0}, ["width must be a number > 0"]),
    ("resnet20", {"width": -1.5}, ["width"]),
    ("resnet18", {"groups": 0}, ["groups must be an integer >= 1"]),
    ("densenet", {"compression": 1.5}, ["compression must be in (0, 1]"]),
    ("densenet", {"blocks": []}, ["blocks must be a non-empty list"]),
    ("resnet20", {"growth_rate": 12}, ["resnet20 has no option 'growth_rate'"]),
    ("vgg16", {}, ["unknown arch 'vgg16'", "densenet, resnet18, resnet20"]),
])
def test_invalid_configurations_raise_clear_errors(arch, kwargs, fragments):
    with pytest.raises(ConfigError) as info:
        build_model(arch, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
