"""The MicroNet Challenge 2019 score: the track's published baseline reproduced, and each counting rule on a model
small enough to count by hand."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.candidate import micronet2019
from search.candidate.micronet2019 import count, count_candidate
from search.compress.compression import Compression
from search.models import build_model


class WideBlock(nn.Module):
    """WideResNet's pre-activation block (Zagoruyko and Komodakis 2016)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wide_resnet(depth=28, k=10, num_classes=100):
    n = (depth - 4) // 6
    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
    for cout, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        for i in range(n):
            layers.append(WideBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def test_the_track_baseline_wideresnet_28_10_counts_as_published():
    # the challenge page: WideResNet-28-10 on CIFAR-100, 36.5 M parameters and 10.49 B math operations, at 32 bits
    c = count(wide_resnet(), freebie=False)
    assert round(c.params / 1e6, 1) == 36.5
    assert round(c.ops / 1e9, 2) == 10.49
    assert round(c.score, 2) == 2.00
    # with the 16-bit freebie (no quantization at all) storage and multiplications halve, additions stay 32-bit
    free = count(wide_resnet())
    assert free.params == pytest.approx(c.params / 2) and free.mults == pytest.approx(c.mults / 2)
    assert free.adds == pytest.approx(c.adds)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_each_rule_on_a_model_counted_by_hand():
    torch.manual_seed(0)
    m = Tiny()
    # 8x8 input: the conv has 4*8*8 = 256 outputs of 27-term dot products; its batch norm folds into a bias
    c = count(m, input_size=(3, 8, 8), freebie=False)
    assert c.params == 108 + 4 + 40 + 10
    assert c.mults == 27 * 256 + 256 + 4 + 40               # conv, ReLU, pooling's divisions, linear
    assert c.adds == 26 * 256 + 256 + 63 * 4 + 3 * 10 + 10  # conv, folded bias, pooling, linear and its bias
    # 8-bit weights and activations: weights at 8 bits, bias and batch norm at 32, products at 8, sums at 32
    q = count(m, qw=8, qa=8, input_size=(3, 8, 8))
    assert q.params == (108 + 40) * 8 / 32 + 4 + 10
    assert q.mults == (27 * 256 + 256 + 4 + 40) * 8 / 32
    assert q.adds == c.adds
    # half of the conv's weights zero: their values and a 1-bit mask of all 108 stored, half the products
    with torch.no_grad():
        m.conv.weight.view(-1)[::2] = 0
    s = count(m, qw=8, qa=8, input_size=(3, 8, 8))
    assert s.params == (54 * 8 + 108 + 40 * 8) / 32 + 4 + 10
    assert s.mults == (13.5 * 256 + 256 + 4 + 40) * 8 / 32
    assert s.adds == 12.5 * 256 + 256 + 63 * 4 + 3 * 10 + 10


def test_one_part_below_16_bits_forfeits_the_freebie():
    m = Tiny()
    sixteen = count(m, qw=16, qa=32, input_size=(3, 8, 8))
    assert sixteen.params == (108 + 40) * 16 / 32 + (4 + 10) * 16 / 32  # everything counted at 16 bits
    four = count(m, qw=4, qa=32, input_size=(3, 8, 8))
    assert four.params == (108 + 40) * 4 / 32 + 4 + 10                 # the rest at 32 bits again
    assert four.mults == count(m, input_size=(3, 8, 8), freebie=False).mults  # products at max(4, 32) bits


class Concat(nn.Module):
    """A batch norm after a concatenation (DenseNet's pre-activation): it cannot fold into a convolution."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(torch.cat([y, y], 1))


def test_a_batch_norm_after_no_convolution_is_a_scale_and_a_shift():
    c = count(Concat(), input_size=(3, 2, 2), freebie=False)
    outputs = 8 * 2 * 2
    assert c.params == 12 + 2 * 8                     # the conv's weights; a scale and a shift per channel
    assert c.mults == 3 * 16 + outputs                # 16 conv outputs of 3 terms; one scale per element
    assert c.adds == 2 * 16 + outputs                 # the dot products' sums; one shift per element


def test_pruning_lowers_the_counts_and_the_candidate_is_counted_pruned():
    model = build_model("resnet20", width=0.5)
    dense = count(model, qw=8, qa=8)
    pruned = count_candidate(build_model("resnet20", width=0.5), Compression(ps=0.5, pu=0.3, qw=8, qa=8))
    assert pruned.params < dense.params / 2 and pruned.ops < dense.ops / 2
    assert pruned.score < dense.score


def test_score_command_prints_both_scores():
    p = subprocess.run([sys.executable, "-m", "search", "score", "--arch", "resnet20", "--ps", "0.5", "--qw", "8",
                        "--qa", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    expected = count_candidate(build_model("resnet20"), Compression(ps=0.5, qw=8, qa=8))
    assert out["micronet2019"]["score"] == pytest.approx(expected.score)
    assert out["score"] > 0 and out["micronet2019"]["score"] != out["score"]
    table = subprocess.run([sys.executable, "-m", "search", "score", "--arch", "resnet20"], capture_output=True,
                           text=True, timeout=120)
    assert "MicroNet 2019 score" in table.stdout and "score" in table.stdout
    assert micronet2019.BASELINE_PARAMS == 36.5e6 and micronet2019.BASELINE_OPS == 10.49e9
