import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from search.candidate.complexity import count_nonzero_params, measure
from search.compress.quantize import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    bake_weights,
    fake_quantize_activation,
    fake_quantize_weight,
    quantization_of,
    quantize_model,
)
from search.errors import ConfigError
from search.models import build_model
from search.models.layers import Act


def quantized_resnet20(qw, qa, seed=0, warm_up=True):
    """A quantized resnet20 whose activation ranges were set by a couple of training-mode batches."""
    torch.manual_seed(seed)
    model = quantize_model(build_model("resnet20"), qw, qa)
    if warm_up:
        with torch.no_grad():
            model.train()
            for _ in range(2):
                model(torch.randn(2, 3, 32, 32))
    return model.eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def distinct_per_channel(w):
    return [torch.unique(row).numel() for row in w.detach().reshape(w.shape[0], -1)]


def first_block_conv(model):
    return model.layer2[0].conv1


# --- weights ---

@pytest.mark.parametrize("bits,most", [(8, 256), (4, 16), (2, 4)])
def test_weight_levels_per_output_channel(bits, most):
    model = quantized_resnet20(bits, 32)
    conv = first_block_conv(model)
    assert isinstance(conv, QuantConv2d) and isinstance(conv, nn.Conv2d)
    q = conv.quantized_weight()
    assert torch.equal(q, fake_quantize_weight(conv.weight, bits))
    assert max(distinct_per_channel(q)) <= min(most, 2 ** bits - 1)
    assert max(distinct_per_channel(q)) > 2  # it does round to a grid, not to a couple of values
    # Symmetric: the largest magnitude of each channel is kept, the rest is at most half a step away.
    amax = conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    step = amax / (2 ** (bits - 1) - 1)
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3), keepdim=True), amax)
    assert ((q - conv.weight).abs() <= step / 2 + 1e-7).all()
    # The forward computes with exactly that weight.
    x = torch.randn(2, conv.in_channels, 8, 8)
    expected = F.conv2d(x, q, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(conv(x), expected)


def test_linear_is_quantized_too():
    model = quantized_resnet20(4, 32)
    assert isinstance(model.fc, QuantLinear) and isinstance(model.conv1, QuantConv2d)  # classifier and stem
    x = torch.randn(3, 64)
    q = model.fc.quantized_weight()
    assert max(distinct_per_channel(q)) <= 16
    assert torch.equal(model.fc(x), F.linear(x, q, model.fc.bias))


def test_one_bit_weights_are_plus_minus_mean_abs():
    conv = first_block_conv(quantized_resnet20(1, 32))
    q = conv.quantized_weight()
    mean_abs = conv.weight.detach().abs().mean(dim=(1, 2, 3))
    for row, m in zip(q.reshape(q.shape[0], -1), mean_abs, strict=True):
        assert torch.allclose(torch.unique(row), torch.stack([-m, m]))
    assert torch.equal(torch.sign(q), torch.sign(conv.weight.detach()))


def test_sixteen_bits_is_fp16_rounding_and_32_is_identity():
    w = torch.randn(8, 4, 3, 3)
    assert torch.equal(fake_quantize_weight(w, 16), w.half().float())
    assert torch.equal(fake_quantize_weight(w, 32), w)
    model = quantize_model(build_model("resnet20"), 16, 32)
    conv = first_block_conv(model)
    assert torch.equal(conv.quantized_weight(), conv.weight.detach().half().float())


def test_all_zero_channel_stays_zero_and_finite():
    w = torch.randn(4, 2, 3, 3)
    w[1] = 0
    for bits in (1, 2, 4, 8, 16):
        q = fake_quantize_weight(w, bits)
        assert torch.isfinite(q).all() and (q[1] == 0).all()


# --- activations ---

def act_outputs(model, x):
    """Input and output of every activation module during one forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
             for m in model.modules() if isinstance(m, Act)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("bits,most", [(8, 256), (4, 16), (2, 4)])
def test_activation_levels(bits, most):
    model = quantized_resnet20(32, bits)
    acts = [m for m in model.modules() if isinstance(m, Act)]
    assert acts and all(isinstance(m, QuantAct) for m in acts)
    for m in acts:
        assert m.running_max > 0
    for (x, y), m in zip(act_outputs(model, images()), acts, strict=True):
        levels = torch.unique(y)
        assert levels.numel() <= most
        assert levels.min() == 0 and levels.max() <= m.running_max * (1 + 1e-6)
        # Within half a step of the clipped ReLU.
        clipped = torch.minimum(F.relu(x), m.running_max)
        assert ((y - clipped).abs() <= m.running_max / (2 ** bits - 1) / 2 * (1 + 1e-5)).all()


def test_activation_32_bits_is_exact_relu_and_16_is_fp16():
    model = quantized_resnet20(4, 32)
    assert all(type(m) is Act for m in model.modules() if isinstance(m, Act))
    for x, y in act_outputs(model, images()):
        assert torch.equal(y, F.relu(x))
    model = quantized_resnet20(32, 16)
    for x, y in act_outputs(model, images()):
        assert torch.equal(y, F.relu(x).half().float())


def test_activation_range_is_robust():
    act = QuantAct(8)
    act.eval()  # never trained: each batch uses its own max
    x = torch.linspace(-1, 3, 1000)
    assert torch.unique(act(x)).numel() <= 256 and act(x).max() == pytest.approx(3.0)
    act.train()
    act(torch.zeros(10))  # all zero (dead ReLU): no 0/0
    act(torch.tensor([1.0, float("nan")]))
    act(torch.tensor([1.0, float("inf")]))
    assert torch.isfinite(act.running_max)
    y = act(torch.tensor([0.0, 2.0]))
    assert torch.isfinite(y).all()
    assert act.running_max > 0
    # The EMA moves a tenth of the way to each new batch max.
    before = float(act.running_max)
    act(torch.tensor([before + 10.0]))
    assert float(act.running_max) == pytest.approx(before + 1.0)
    # Eval uses the buffer as is: clips above it, does not update it.
    act.eval()
    out = act(torch.tensor([100.0]))
    assert float(out) == pytest.approx(float(act.running_max)) and float(act.running_max) < 100


def test_fake_quantize_activation_function():
    x = torch.linspace(-2, 6, 500)
    y = fake_quantize_activation(x, 4, 4.0)
    assert torch.unique(y).numel() == 16 and y.min() == 0 and y.max() == pytest.approx(4.0)
    assert torch.equal(fake_quantize_activation(x, 32, 4.0), F.relu(x))
    assert torch.isfinite(fake_quantize_activation(x, 8, 0.0)).all()


# --- training ---

def test_gradients_flow_through_quantizers():
    model = quantized_resnet20(4, 4).train()
    loss = F.cross_entropy(model(images(4)), torch.arange(4))
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in convs:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert all(b.grad is None for b in model.buffers())


def test_weight_and_activation_ste_gradients():
    w = torch.randn(4, 3, requires_grad=True)
    fake_quantize_weight(w, 2).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # identity
    x = torch.tensor([-1.0, 0.5, 2.0, 5.0], requires_grad=True)
    fake_quantize_activation(x, 4, 3.0).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))  # zero below 0 and above the range


def test_sgd_reduces_the_loss():
    torch.manual_seed(0)
    model = quantize_model(build_model("resnet20", width=0.5), 4, 4).train()
    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.7 * losses[0]


# --- pruning ---

def check_pruned_zeros(conv, x):
    mask = conv.weight_mask.bool()
    q = conv.quantized_weight()
    assert (q[~mask] == 0).all()
    if conv.weight_bits == 1:
        assert (q[mask] != 0).all()  # the kept weights are ±scale (at 2+ bits small ones may round to 0)
    expected = F.conv2d(x, fake_quantize_weight(conv.weight_orig * conv.weight_mask, conv.weight_bits), None,
                        conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(conv(x), expected)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("order", ["prune-then-quantize", "quantize-then-prune"])
def test_pruned_weights_stay_zero(bits, order):
    torch.manual_seed(0)
    model = build_model("resnet20")
    conv = first_block_conv(model)
    if order == "prune-then-quantize":
        prune.l1_unstructured(conv, "weight", amount=0.5)
        quantize_model(model, bits, 8)
    else:
        quantize_model(model, bits, 8)
        prune.l1_unstructured(conv, "weight", amount=0.5)
    assert isinstance(conv, QuantConv2d)
    x = torch.randn(2, conv.in_channels, 8, 8)
    # No grad: a pruned weight computed with grad is a non-leaf tensor, and copy.deepcopy (measure) refuses it.
    with torch.no_grad():
        model(images(2))  # the prune pre-hook runs
        check_pruned_zeros(conv, x)
        # The pre-hook still recomputes the weight from weight_orig and the mask: prune more, change weight_orig.
        prune.l1_unstructured(conv, "weight", amount=0.5)
        conv.weight_orig.mul_(2)
        conv(x)
        check_pruned_zeros(conv, x)
    dense = count_nonzero_params(build_model("resnet20"))
    assert count_nonzero_params(model) == dense - conv.weight.numel() * 3 // 4


# --- export ---

@pytest.mark.parametrize("qw", [1, 4, 8])
def test_bake_weights_matches_fake_quant(qw):
    model = quantized_resnet20(qw, 8)
    x = images()
    with torch.no_grad():
        expected = model(x)
    bake_weights(model)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted and all(type(m) in (nn.Conv2d, nn.Linear) for m in weighted)
    for m in weighted:
        assert max(distinct_per_channel(m.weight)) <= 2 ** qw
    assert all(type(m) is QuantAct for m in model.modules() if isinstance(m, Act))
    assert quantization_of(model) == (qw, 8)


def test_bake_weights_refuses_pruning_masks():
    model = quantized_resnet20(4, 8)
    conv = first_block_conv(model)
    prune.l1_unstructured(conv, "weight", amount=0.3)
    with pytest.raises(ValueError, match="prune.remove"):
        bake_weights(model)
    assert all(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))  # nothing changed
    prune.remove(conv, "weight")
    bake_weights(model)
    assert (conv.weight == 0).sum() >= 0.3 * conv.weight.numel() - 1


def test_trace_matches_eager():
    model = quantized_resnet20(4, 8)
    x = images(4)
    with torch.no_grad():
        traced = torch.jit.trace(model, images(2, seed=5))
        assert torch.equal(traced(x), model(x))


def test_modules_script():
    for module, x in [(QuantConv2d(3, 4, 3, weight_bits=4), torch.randn(2, 3, 6, 6)),
                      (QuantLinear(5, 3, weight_bits=1), torch.randn(2, 5)),
                      (QuantAct(8).eval(), torch.randn(2, 5))]:
        assert torch.equal(torch.jit.script(module)(x), module(x))


# --- checkpoints ---

def test_state_dict_round_trip_and_deepcopy():
    model = quantized_resnet20(4, 8, seed=0)
    plain_keys = set(build_model("resnet20").state_dict())
    keys = set(model.state_dict())
    assert plain_keys <= keys
    assert all(k.endswith("running_max") for k in keys - plain_keys)
    fresh = quantized_resnet20(4, 8, seed=1, warm_up=False)
    fresh.load_state_dict(model.state_dict())
    x = images()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert quantization_of(copy.deepcopy(model)) == (4, 8)


def test_float_checkpoint_loads_into_quantized_model():
    float_model = build_model("resnet20")
    model = quantize_model(build_model("resnet20"), 8, 8)
    model.load_state_dict(float_model.state_dict())  # strict: the unset ranges are not reported missing
    assert torch.equal(model.conv1.weight, float_model.conv1.weight)


# --- bookkeeping ---

def test_complexity_unchanged():
    plain = measure(build_model("resnet20"))
    assert measure(quantized_resnet20(4, 8)) == plain
    assert measure(quantized_resnet20(1, 2)) == plain


def test_quantization_of_and_no_op():
    model = build_model("resnet20")
    keys = list(model.state_dict())
    assert quantization_of(model) == (32, 32)
    assert quantize_model(model, 32, 32) is model
    assert list(model.state_dict()) == keys
    assert not any(isinstance(m, (QuantConv2d, QuantLinear, QuantAct)) for m in model.modules())
    assert quantization_of(quantize_model(model, 32, 8)) == (32, 8)
    assert quantization_of(quantize_model(build_model("resnet20"), 2, 32)) == (2, 32)
    model = quantize_model(build_model("densenet", blocks=(1, 1, 1)), 8, 4)
    assert quantization_of(model) == (8, 4)
    assert quantize_model(model, 8, 4) is model  # same bits again: nothing to do
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, 4, 4)


@pytest.mark.parametrize("qw,qa", [(3, 8), (0, 8), (64, 8), (8, 1), (8, 6), (True, 8), (8, "8")])
def test_bad_bits_raise_config_error(qw, qa):
    model = build_model("resnet20")
    with pytest.raises(ConfigError):
        quantize_model(model, qw, qa)
    assert quantization_of(model) == (32, 32)


def test_bad_bits_in_the_functions():
    with pytest.raises(ConfigError):
        fake_quantize_weight(torch.randn(2, 2), 3)
    with pytest.raises(ConfigError):
        fake_quantize_activation(torch.randn(2), 1, 1.0)


def test_model_without_act_refuses_activation_bits():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ConfigError, match="Act"):
        quantize_model(model, 8, 8)
    assert isinstance(quantize_model(model, 8, 32)[0], QuantConv2d)
