import optuna
import pytest

from search.errors import ConfigError
from search.space import load_space, parse_space
from search.study import StudyConfig, candidate_from


def sample_many(space, n=60, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial))
        study.tell(trial, 0.0)
    return out


def test_default_space_covers_the_knobs():
    space = load_space("spaces/micronet.yaml")
    for key in ("arch", "width", "groups", "depthwise", "growth_rate", "blocks", "ps", "pu", "qw", "qa",
                "distillation", "kd_temperature", "kd_alpha", "kd_decreasing", "lr", "weight_decay",
                "label_smoothing"):
        assert key in space.names()
    spec = {p.name: p for p in space.params}
    assert set(spec["arch"].choices) == {"resnet20", "densenet", "resnet18"}
    assert set(spec["groups"].choices) == {1, 2, 4, 8}
    assert set(spec["qw"].choices) == {1, 2, 4, 8, 16, 32} and set(spec["qa"].choices) == {4, 8, 16, 32}


def test_conditionals_and_the_ps_pu_bound():
    space = load_space("spaces/micronet.yaml")
    for values in sample_many(space, 120):
        assert ("growth_rate" in values) == (values["arch"] == "densenet")
        assert ("kd_temperature" in values) == values["distillation"]
        assert values["ps"] + values["pu"] <= space.max_ps_plus_pu + 1e-9


def test_sampled_values_make_valid_candidates():
    space = load_space("spaces/micronet.yaml")
    config = StudyConfig(name="t")
    for values in sample_many(space, 40):
        cand = candidate_from(values, config)
        assert cand.arch == values["arch"]
        assert cand.compression.ps == values["ps"]
        assert (cand.distillation is not None) == values["distillation"]
        if values.get("kd_decreasing"):
            assert cand.distillation.final_temperature == pytest.approx(values["kd_temperature"] / 2)
        if values["arch"] == "densenet":
            assert cand.arch_options["blocks"] == [int(x) for x in values["blocks"].split(",")]
        assert cand.train.lr == values["lr"]


def test_fixed_values_and_int_ranges():
    space = parse_space({"params": {"arch": "resnet20", "groups": {"value": 2},
                                    "batch_size": {"low": 32, "high": 128, "step": 32, "int": True}}})
    for values in sample_many(space, 10):
        assert values["arch"] == "resnet20" and values["groups"] == 2
        assert values["batch_size"] in (32, 64, 96, 128)


@pytest.mark.parametrize("raw,fragment", [
    ({"params": {"archh": {"choices": [1]}}}, "unknown space key 'archh'"),
    ({"params": {"ps": {"low": 0.5, "high": 0.1}}}, "low <= high"),
    ({"params": {"lr": {"low": 0, "high": 1, "log": True}}}, "log range needs low > 0"),
    ({"params": {"ps": {"low": 0, "high": 1, "choices": [1]}}}, "exactly one of"),
    ({"params": {"groups": {"choices": []}}}, "non-empty list"),
    ({"params": {"growth_rate": {"choices": [8], "when": {"arch": "densenet"}}}}, "not a parameter above"),
    ({"params": {"ps": {"low": 0, "high": 0.5, "stp": 0.1}}}, "unknown spec key 'stp'"),
    ({"params": {"ps": {"low": 0, "high": 0.5}}, "max_ps_plus_pu": 1.5}, "max_ps_plus_pu must be in (0, 1)"),
    ({"parameters": {}}, "unknown key 'parameters'"),
    ({}, "'params' must map parameter names"),
])
def test_space_validation(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_space(raw, "s.yaml")
    assert fragment in str(info.value) and str(info.value).startswith("s.yaml")


def test_yaml_string_numbers_are_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("params:\n  weight_decay: {low: 1e-5, high: 1e-3, log: true}\n")
    (spec,) = load_space(path).params
    assert (spec.low, spec.high) == (1e-5, 1e-3)
