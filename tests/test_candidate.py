import pytest
import torch
from torch import nn

from search.candidate.candidate import Candidate, footprint
from search.candidate.complexity import count_params
from search.candidate.recipe import Distillation, TrainConfig
from search.compress import QuantAct, QuantConv2d, QuantLinear
from search.compress.compression import Compression
from search.errors import ConfigError
from search.models import build_model
from search.models.densenet import DenseNet
from search.models.layers import Act
from search.training.data import DataConfig, load_data, normalize
from search.training.run import run_candidate


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=256))


def small(**kwargs):
    train = kwargs.pop("train", TrainConfig(epochs=2, batch_size=64))
    return Candidate(arch="resnet20", width=0.5, train=train, **kwargs)


def test_costs_before_training_follow_each_knob():
    base = footprint(small(), 10)
    assert base.dense == base.compressed
    # measured counts non-zero parameters: a fresh model's zero BN biases make it a hair lower
    assert base.measured_score.total == pytest.approx(base.score.total, rel=0.01)
    assert base.measured_score.total <= base.score.total
    ps = footprint(small(compression=Compression(ps=0.5)), 10)
    assert ps.compressed.macs < 0.5 * ps.dense.macs and ps.compressed.params < 0.5 * ps.dense.params
    pu = footprint(small(compression=Compression(pu=0.6)), 10)
    assert pu.compressed.macs == pu.dense.macs
    assert pu.compressed.nonzero_params < 0.5 * pu.dense.params
    q = footprint(small(compression=Compression(qw=8, qa=8)), 10)
    assert q.score.total == pytest.approx(base.score.total / 4)
    assert q.measured_score.total == pytest.approx(q.score.total, rel=0.01)


def _accuracy(model, x, y, data):
    """Top-1 accuracy of ``model`` recomputed here, in one eval-mode float32 batch."""
    model.eval()
    with torch.no_grad():
        logits = model(normalize(x, data.mean, data.std))
    return (logits.argmax(1) == y).float().mean().item()


def test_compressed_candidate_end_to_end(synthetic):
    cand = small(compression=Compression(ps=0.3, pu=0.4, qw=4, qa=8))
    result = run_candidate(cand, synthetic, test=True)
    c = result.footprint
    assert c.compressed.params < c.dense.params and c.compressed.macs < c.dense.macs
    assert result.sparsity == pytest.approx(0.4, abs=0.01)
    assert result.epochs_run == 2 and len(result.history) == 2
    model = result.model
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # masks made permanent
    # the reported accuracies are the returned (trained, compressed) model's, each on its own split
    assert result.val_accuracy == pytest.approx(_accuracy(model, synthetic.x_val, synthetic.y_val, synthetic))
    assert result.test_accuracy == pytest.approx(_accuracy(model, synthetic.x_test, synthetic.y_test, synthetic))

    # the model computes with 4-bit weights: every conv and linear, at most 2·(2^3 - 1) + 1 = 15 levels per channel
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted and all(isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_bits == 4 for m in weighted)
    for m in weighted:
        q = m.quantized_weight().detach().flatten(1)
        assert max(len(torch.unique(row)) for row in q) <= 15
    # ... and with 8-bit activations: each activation's output takes at most 2^8 values
    acts = [m for m in model.modules() if isinstance(m, Act)]
    assert acts and all(isinstance(m, QuantAct) and m.bits == 8 for m in acts)
    levels = []
    hooks = [m.register_forward_hook(lambda m, i, o: levels.append(len(torch.unique(o)))) for m in acts]
    with torch.no_grad():
        out = model.eval()(normalize(synthetic.x_test[:16], synthetic.mean, synthetic.std))
    for h in hooks:
        h.remove()
    assert len(levels) == len(acts) and max(levels) <= 256
    assert out.shape == (16, 10)
    summary = result.summary()
    for key in ("val_accuracy", "test_accuracy", "params", "macs", "compressed_params", "compressed_macs",
                "nonzero_params", "score", "measured_score", "train_images_per_s", "wall_s"):
        assert key in summary


def test_pruned_weights_stay_removed_while_training_on(synthetic, monkeypatch):
    import search.training.run as cand_module  # where run_candidate looks compress up

    zeros_after_compress = {}
    real = cand_module.compress

    def spy(model, compression):
        model = real(model, compression)
        zeros_after_compress["mask"] = {n: m.weight_mask.clone() for n, m in model.named_modules()
                                        if hasattr(m, "weight_mask")}
        return model

    monkeypatch.setattr(cand_module, "compress", spy)
    result = run_candidate(small(compression=Compression(pu=0.5), train=TrainConfig(epochs=3, batch_size=64)),
                           synthetic)
    modules = dict(result.model.named_modules())
    for name, mask in zeros_after_compress["mask"].items():
        assert torch.all(modules[name].weight[mask == 0] == 0)


def test_validation_accuracy_is_the_objective(synthetic):
    result = run_candidate(small(), synthetic)
    assert result.test_accuracy is None  # the search never looks at the test split
    assert result.val_accuracy == result.history[-1].val_accuracy


def test_dense_epochs_leave_room_for_training_after_compression():
    assert small(compression=Compression(ps=0.3), compress_at=0.9,
                 train=TrainConfig(epochs=3)).dense_epochs == 2
    assert small(train=TrainConfig(epochs=3)).dense_epochs == 3
    assert small(compression=Compression(qw=8), compress_at=0.0).dense_epochs == 0


def test_candidate_round_trips_through_a_dict():
    cand = Candidate(arch="densenet", arch_options={"growth_rate": 8, "blocks": [2, 2]},
                     compression=Compression(ps=0.2, qw=8), distillation=Distillation(temperature=10,
                                                                                      final_temperature=5))
    again = Candidate.from_dict(cand.to_dict())
    assert again == cand
    assert isinstance(again.build(10), nn.Module)


@pytest.mark.parametrize("data,fragment", [
    ({"arhc": "resnet20"}, "unknown key 'arhc'"),
    ({"compression": {"ps": 0.7, "pu": 0.5}}, "candidate.compression: ps + pu must be below 1"),
    ({"train": {"epochs": 0}}, "epochs must be an integer from 1 to 10000"),
    ({"compress_at": 1.0}, "compress_at must be in [0, 1)"),
])
def test_bad_candidate_dicts(data, fragment):
    with pytest.raises(ConfigError) as info:
        Candidate.from_dict(data)
    assert fragment in str(info.value)


def _block_3x3_convs(model):
    """The 3×3 convs inside the blocks (``groups`` applies to them; the stem conv1 stays dense)."""
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and name != "conv1"]


def test_candidate_with_densenet_and_groups_compresses(synthetic):
    options = {"growth_rate": 8, "blocks": [2, 2, 2]}
    cand = Candidate(arch="densenet", groups=2, arch_options=options,
                     compression=Compression(ps=0.3, qw=8, qa=8), train=TrainConfig(epochs=2, batch_size=64))
    # the candidate builds the grouped DenseNet: groups=2 halves the weights of its block 3×3 convs, and only those
    built, plain = cand.build(10), build_model("densenet", **options)
    assert isinstance(built, DenseNet) and _block_3x3_convs(plain)
    assert {m.groups for m in _block_3x3_convs(built)} == {2}
    halved = sum(m.weight.numel() for m in _block_3x3_convs(plain)) // 2
    assert count_params(built) == count_params(plain) - halved
    assert built(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    result = run_candidate(cand, synthetic)
    assert result.footprint.dense.params == count_params(built)
    assert result.footprint.compressed.macs < result.footprint.dense.macs
    assert {m.groups for m in _block_3x3_convs(result.model)} == {2}  # structured pruning kept them grouped
    assert result.model.eval()(synthetic.x_test[:2].float()).shape == (2, 10)


def test_known_costs_give_the_same_measurement(synthetic):
    from search.candidate.complexity import measure

    cand = small(compression=Compression(ps=0.3, pu=0.3, qw=8, qa=8))
    known = footprint(cand, synthetic.num_classes)
    result = run_candidate(cand, synthetic, known=known)
    assert result.footprint.dense == known.dense
    assert result.footprint.compressed == measure(result.model)  # MACs reused, non-zero parameters recounted
