"""Compression as plug-in steps: one pipeline for training (compress, finish) and for loading (rebuild)."""

import pytest
import torch
from torch import nn

from search.compress import QuantConv2d, steps
from search.compress.compression import Compression
from search.compress.pruning import has_masks, make_permanent, prune_structured, prune_unstructured
from search.compress.quantize import quantize_model
from search.models import build_model


def model():
    torch.manual_seed(0)
    return build_model("resnet20", width=0.25)


def test_the_pipeline_is_structured_then_unstructured_then_quantization():
    assert [s.name for s in steps.STEPS] == ["structured pruning", "unstructured pruning", "quantization"]
    assert [s.structural for s in steps.STEPS] == [True, False, True]
    c = Compression(ps=0.5, pu=0.3, qw=4, qa=8)
    by_hand = prune_structured(model(), 0.5)
    prune_unstructured(by_hand, 0.3)
    by_hand = quantize_model(by_hand, 4, 8)
    piped = steps.compress(model(), c)
    assert {k: v.shape for k, v in piped.state_dict().items()} == {k: v.shape for k, v in by_hand.state_dict().items()}
    for (k, a), b in zip(piped.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert has_masks(piped) and any(isinstance(m, QuantConv2d) for m in piped.modules())
    steps.finish(piped, c)
    assert not has_masks(piped)
    make_permanent(by_hand)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(piped.eval()(x), by_hand.eval()(x))


def test_rebuild_replays_only_the_structural_steps_and_fits_the_trained_weights():
    c = Compression(ps=0.5, pu=0.4, qw=8, qa=8)
    trained = steps.compress(model(), c)
    steps.finish(trained, c)
    rebuilt = steps.rebuild(build_model("resnet20", width=0.25), c)
    assert not has_masks(rebuilt)  # unstructured pruning is not replayed: its zeros are in the weights
    rebuilt.load_state_dict(trained.state_dict())  # same shapes, same quantized modules
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), trained.eval()(x))


def test_an_off_step_is_skipped_and_a_registered_step_joins_the_pipeline(monkeypatch):
    calls = []

    class Halve(steps.CompressionStep):
        """A toy method: scale the classifier's weights (structural so that loading replays it)."""

        name, params, structural = "halve", ("qw",), True

        def apply(self, m, c):
            calls.append(c.qw)
            fc = [x for x in m.modules() if isinstance(x, nn.Linear)][-1]
            fc.weight.data *= 0.5
            return m

    monkeypatch.setattr(steps, "STEPS", list(steps.STEPS))
    steps.register(Halve())
    assert steps.STEPS[-1].name == "halve"
    steps.compress(model(), Compression())  # nothing asked: no step runs
    assert calls == []
    steps.compress(model(), Compression(qw=8))
    steps.rebuild(model(), Compression(qw=8))
    assert calls == [8, 8]
    with pytest.raises(ValueError, match="compression step 'halve' is already registered"):
        steps.register(Halve())  # the same name again is refused (as models and objectives are)
    assert [s.name for s in steps.STEPS].count("halve") == 1
