import math

import pytest
import torch
from torch.nn.utils import prune

from search.candidate.complexity import count_macs, count_nonzero_params, count_params, measure
from search.candidate.score import ScoreReference, compute_score, score_model
from search.compress.compression import Compression
from search.errors import ConfigError
from search.models import build_model

MACS = [
    ("resnet18", {}, 556_651_530),
    ("resnet18", {"groups": 2}, 282_973_194),
    ("resnet18", {"groups": 8}, 77_714_442),
    ("resnet18", {"depthwise": True}, 74_277_898),
]


@pytest.mark.parametrize("arch,kwargs,expected", MACS)
def test_macs_match_the_seed_tables(arch, kwargs, expected):
    assert count_macs(build_model(arch, **kwargs)) == expected


# Seed 000's rows (score with no compression).
@pytest.mark.parametrize("kwargs,expected", [({"groups": 2}, 2.0251), ({"groups": 8}, 0.5564),
                                             ({"depthwise": True}, 0.5224)])
def test_seed_000_scores(kwargs, expected):
    report = score_model(build_model("resnet18", **kwargs))
    assert report.score.total == pytest.approx(expected, abs=1e-4)


def test_score_formula_terms():
    s = compute_score(5_600_000, 280_000_000, Compression(ps=0.3, pu=0.2, qw=8, qa=16))
    assert s.param_term == pytest.approx(0.5 * 8 / 32)
    assert s.macs_term == pytest.approx(0.7 * 16 / 32)
    assert s.total == pytest.approx(0.5 * 8 / 32 + 0.7 * 16 / 32)  # 0.475, from the formula, not from its terms


def test_the_mac_term_takes_the_larger_of_weight_and_activation_bits():
    # qw > qa: the MAC term runs at the weights' 8 bits, not the activations' 4 (the formula's max(qw, qa))
    s = compute_score(5_600_000, 280_000_000, Compression(qw=8, qa=4))
    assert (s.param_term, s.macs_term, s.total) == pytest.approx((0.25, 0.25, 0.5))
    s = compute_score(5_600_000, 280_000_000, Compression(ps=0.5, qw=16, qa=2))
    assert (s.param_term, s.macs_term, s.total) == pytest.approx((0.25, 0.25, 0.5))


def test_score_reference_is_configurable():
    s = compute_score(1_000, 2_000, reference=ScoreReference(params=1_000, macs=1_000))
    assert (s.param_term, s.macs_term) == (1.0, 2.0)


def test_measure_counts_zeros_and_leaves_the_model_untouched():
    model = build_model("resnet20")
    model.train()
    with torch.no_grad():
        model.fc.weight[:5].zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = measure(model)
    assert counts.params == 272_474
    assert counts.params - counts.nonzero_params >= 5 * 64
    assert counts.macs > 0
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "compute_average_flops_cost")


def test_nonzero_counts_the_masked_weight_of_torch_pruning():
    model = build_model("resnet20")
    dense_nonzero = count_nonzero_params(model)
    prune.l1_unstructured(model.fc, "weight", amount=0.5)
    assert count_params(model) == 272_474  # weight_orig is not counted twice
    assert dense_nonzero - count_nonzero_params(model) == 320


@pytest.mark.parametrize("kwargs,fragment", [
    ({"ps": 0.6, "pu": 0.4}, "ps + pu must be below 1"),
    ({"ps": -0.1}, "ps must be a number >= 0"),
    ({"pu": math.nan}, "pu must be a number >= 0"),
    ({"qw": 3}, "qw must be one of 1, 2, 4, 8, 16, 32"),
    ({"qa": 1}, "qa must be one of 2, 4, 8, 16, 32"),
    ({"qw": True}, "qw must be one of"),
])
def test_compression_validation(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("+", r"\+")):
        Compression(**kwargs)


@pytest.mark.parametrize("qw", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("qa", [2, 4, 8, 16, 32])
def test_all_legal_bit_widths_are_accepted(qw, qa):
    assert Compression(qw=qw, qa=qa).qw == qw


def test_reference_validation():
    with pytest.raises(ConfigError, match="reference macs must be a number > 0"):
        ScoreReference(macs=0)


def test_macs_count_subclasses_of_known_modules():
    class MyConv(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(MyConv(3, 8, 3, padding=1, bias=False))
    assert count_macs(model) == 8 * 3 * 9 * 32 * 32


def test_measure_works_on_a_model_with_live_pruning_masks():
    model = build_model("resnet20")
    prune.global_unstructured([(model.fc, "weight"), (model.conv1, "weight")], prune.L1Unstructured, amount=0.5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # the masked weights now carry autograd history
    counts = measure(model)
    assert counts.params == 272_474 and counts.nonzero_params < 271_690 - 500
