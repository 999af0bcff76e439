import pytest
import torch
from torch import nn

from search.candidate import Candidate, costs, run_candidate
from search.compress import QuantConv2d, fake_quantize_weight
from search.data import DataConfig, load_data
from search.errors import ConfigError
from search.models import build_model
from search.score import Compression
from search.train import Distillation, TrainConfig


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataConfig(name="synthetic", synthetic_size=256))


def small(**kwargs):
    train = kwargs.pop("train", TrainConfig(epochs=2, batch_size=64))
    return Candidate(arch="resnet20", width=0.5, train=train, **kwargs)


def test_costs_before_training_follow_each_knob():
    base = costs(small(), 10)
    assert base.dense == base.compressed
    # measured counts non-zero parameters: a fresh model's zero BN biases make it a hair lower
    assert base.measured_score.total == pytest.approx(base.course_score.total, rel=0.01)
    assert base.measured_score.total <= base.course_score.total
    ps = costs(small(compression=Compression(ps=0.5)), 10)
    assert ps.compressed.macs < 0.5 * ps.dense.macs and ps.compressed.params < 0.5 * ps.dense.params
    pu = costs(small(compression=Compression(pu=0.6)), 10)
    assert pu.compressed.macs == pu.dense.macs
    assert pu.compressed.nonzero_params < 0.5 * pu.dense.params
    q = costs(small(compression=Compression(qw=8, qa=8)), 10)
    assert q.course_score.total == pytest.approx(base.course_score.total / 4)
    assert q.measured_score.total == pytest.approx(q.course_score.total, rel=0.01)


def test_compressed_candidate_end_to_end(synthetic):
    cand = small(compression=Compression(ps=0.3, pu=0.4, qw=4, qa=8))
    result = run_candidate(cand, synthetic, test=True)
    c = result.costs
    assert c.compressed.params < c.dense.params and c.compressed.macs < c.dense.macs
    assert result.sparsity == pytest.approx(0.4, abs=0.01)
    assert result.epochs_run == 2 and len(result.history) == 2
    assert 0 <= result.val_accuracy <= 1 and 0 <= result.test_accuracy <= 1
    model = result.model
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # masks made permanent
    conv = next(m for m in model.modules() if isinstance(m, QuantConv2d) and m.groups == 1 and m.kernel_size[0] == 3)
    q = fake_quantize_weight(conv.weight.detach(), 4)
    assert all(len(torch.unique(row)) <= 16 for row in q)
    out = model.eval()(synthetic.x_test[:4].float())
    assert out.shape == (4, 10)
    summary = result.summary()
    for key in ("val_accuracy", "test_accuracy", "params", "macs", "compressed_params", "compressed_macs",
                "nonzero_params", "score", "measured_score", "train_images_per_s", "wall_s"):
        assert key in summary


def test_pruned_weights_stay_removed_while_training_on(synthetic, monkeypatch):
    import search.candidate as cand_module

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
    ({"train": {"epochs": 0}}, "epochs must be an integer >= 1"),
    ({"compress_at": 1.0}, "compress_at must be in [0, 1)"),
])
def test_bad_candidate_dicts(data, fragment):
    with pytest.raises(ConfigError) as info:
        Candidate.from_dict(data)
    assert fragment in str(info.value)


def test_candidate_with_densenet_and_groups_compresses(synthetic):
    cand = Candidate(arch="densenet", groups=2, arch_options={"growth_rate": 8, "blocks": [2, 2, 2]},
                     compression=Compression(ps=0.3, qw=8, qa=8), train=TrainConfig(epochs=2, batch_size=64))
    result = run_candidate(cand, synthetic)
    assert result.costs.compressed.macs < result.costs.dense.macs
    assert all(m.in_channels % m.groups == 0 for m in result.model.modules() if isinstance(m, nn.Conv2d))
    assert build_model("densenet", growth_rate=8, blocks=[2, 2, 2], groups=2) is not None


def test_known_costs_give_the_same_measurement(synthetic):
    from search.complexity import measure

    cand = small(compression=Compression(ps=0.3, pu=0.3, qw=8, qa=8))
    known = costs(cand, synthetic.num_classes)
    result = run_candidate(cand, synthetic, known=known)
    assert result.costs.dense == known.dense
    assert result.costs.compressed == measure(result.model)  # MACs reused, non-zero parameters recounted
