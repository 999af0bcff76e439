"""One table of search parameters (search.space.params): the space, the candidate mapping, the CLI flags of train and
score
and the front columns all come from it."""

import re
from pathlib import Path

import pytest

from search.candidate.recipe import TrainConfig
from search.cli.train import job_from_args
from search.errors import ConfigError
from search.results.front import ROW_KEYS
from search.space.params import PARAMETERS, candidate_from, columns, flags
from search.space.space import CHECKS, PARAMS

# one legal value per parameter, unlike every default, to see it land
VALUES = {
    "arch": "densenet", "width": 0.5, "groups": 2, "depthwise": True, "growth_rate": 8, "blocks": "2,2,2",
    "bottleneck": True, "ps": 0.3, "pu": 0.2, "qw": 8, "qa": 16, "compress_at": 0.25, "distillation": True,
    "kd_temperature": 3.0, "kd_alpha": 0.7, "kd_decreasing": True, "lr": 0.07, "weight_decay": 1e-3,
    "label_smoothing": 0.2, "batch_size": 64, "cutout": 8, "optimizer": "adamw", "mixup": 0.2, "cutmix": 1.0,
}


def test_the_space_is_the_table():
    assert set(PARAMS) == set(PARAMETERS) == set(CHECKS) == set(VALUES)
    for name, p in PARAMETERS.items():
        assert PARAMS[name] == p.help and CHECKS[name] is p.check


@pytest.mark.parametrize("name", sorted(VALUES))
def test_each_value_lands_where_the_table_says(name):
    values = {name: VALUES[name]}
    if name.startswith("kd_"):
        values["distillation"] = True  # the distillation settings act only with it on
    candidate = candidate_from(values, TrainConfig(), 0.5).to_dict()
    expected = {"blocks": [2, 2, 2], "kd_decreasing": 2.0}.get(name, VALUES[name])  # decreasing: T (4) / 2
    assert PARAMETERS[name].read(candidate) == expected, (name, candidate)
    if name.startswith("kd_"):
        assert candidate_from({name: VALUES[name]}, TrainConfig(), 0.5).distillation is None


def test_all_values_together_build_the_whole_candidate():
    c = candidate_from(VALUES, TrainConfig(), 0.5)
    assert (c.arch, c.width, c.groups, c.depthwise, c.compress_at) == ("densenet", 0.5, 2, True, 0.25)
    assert c.arch_options == {"growth_rate": 8, "blocks": [2, 2, 2], "bottleneck": True}
    assert (c.compression.ps, c.compression.pu, c.compression.qw, c.compression.qa) == (0.3, 0.2, 8, 16)
    assert (c.distillation.temperature, c.distillation.alpha, c.distillation.final_temperature) == (3.0, 0.7, 1.5)
    t = c.train
    assert (t.lr, t.weight_decay, t.label_smoothing, t.batch_size, t.optimizer, t.mixup, t.cutmix) == (
        0.07, 1e-3, 0.2, 64, "adamw", 0.2, 1.0)
    assert t.augment.cutout == 8


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_check_refuses_a_value_that_can_never_build(name):
    bad = {"arch": "vgg", "optimizer": "adam", "blocks": "a,b"}.get(name, -1)
    if name in ("depthwise", "bottleneck", "distillation", "kd_decreasing"):
        bad = "yes"
    with pytest.raises(ConfigError):
        PARAMETERS[name].check(bad)


def test_train_flags_set_the_same_candidate_fields():
    from search.cli import build_parser

    given = {p.name: VALUES[p.name] for p in flags("train")}
    argv = [x for p in flags("train") for x in ([p.flag] if given[p.name] is True else [p.flag, str(given[p.name])])]
    candidate = job_from_args(build_parser().parse_args(["train", *argv]))[0].to_dict()
    for p in flags("train"):
        assert p.read(candidate) == ([2, 2, 2] if p.name == "blocks" else VALUES[p.name]), p.name


def test_score_flags_default_to_the_candidate_defaults():
    from search.cli import build_parser

    args = build_parser().parse_args(["score", "--arch", "resnet20"])
    assert (args.width, args.groups, args.depthwise, args.ps, args.pu, args.qw, args.qa) == (
        1.0, 1, False, 0.0, 0.0, 32, 32)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score"])  # --arch is required


def test_the_front_columns_are_the_table_columns():
    assert [p.name for p in columns()] == ["arch", "width", "groups", "depthwise", "ps", "pu", "qw", "qa",
                                           "kd_temperature"]
    assert all(p.name in ROW_KEYS for p in columns())


def test_each_parameter_is_defined_once():
    """The commands refer to a parameter by name; none gives it a flag (and a help text) by hand."""
    root = Path(__file__).resolve().parents[1] / "search" / "cli"
    for path in root.rglob("*.py"):
        if path.name == "teacher.py":  # the teacher command's flags set the teacher (TeacherSpec), not a candidate
            continue
        text = path.read_text()
        for p in PARAMETERS.values():
            assert not re.search(rf'add_argument\(\s*"{re.escape(p.flag)}"', text), (path, p.flag)
