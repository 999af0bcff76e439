import optuna
import pytest

from search.errors import ConfigError
from search.space.space import load_space, parse_space
from search.study.study_file import StudyConfig, candidate_from


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
    # values that can never build: refused with the key and the legal values
    ({"params": {"arch": {"choices": ["resnet20", "vgg"]}}},
     "params.arch: 'vgg' can never build: unknown arch 'vgg'; known archs: densenet, resnet18, resnet20"),
    ({"params": {"qw": {"choices": [0, 64]}}}, "params.qw: 0 can never build: qw must be one of 1, 2, 4, 8, 16, 32"),
    ({"params": {"qa": {"value": 3}}}, "params.qa: 3 can never build: qa must be one of"),
    ({"params": {"ps": {"low": 0.0, "high": 1.0}}}, "params.ps: 1.0 can never build: ps must be in [0, 1)"),
    ({"params": {"pu": {"low": -0.1, "high": 0.5}}}, "params.pu: -0.1 can never build: pu must be a number >= 0"),
    ({"params": {"width": {"choices": [0.5, 0]}}}, "params.width: 0 can never build: every arch: width must be"),
    ({"params": {"groups": {"low": 1, "high": 4}}}, "params.groups: 1.0 can never build: every arch: groups must be "
                                                    "an integer >= 1"),
    ({"params": {"depthwise": {"choices": [True, "yes"]}}}, "params.depthwise: 'yes' can never build"),
    ({"params": {"compress_at": {"value": 1.0}}}, "params.compress_at: 1.0 can never build: compress_at must be in"),
    ({"params": {"lr": {"choices": [0.1, -0.1]}}}, "params.lr: -0.1 can never build: lr must be a number > 0"),
    ({"params": {"batch_size": {"low": 64, "high": 256}}}, "params.batch_size: 64.0 can never build: batch_size must "
                                                           "be an integer"),
    ({"params": {"kd_alpha": {"low": 0.5, "high": 1.5}}}, "params.kd_alpha: 1.5 can never build: kd alpha must be in"),
    ({"params": {"cutout": {"choices": [0, -8]}}}, "params.cutout: -8 can never build"),
    ({"params": {"blocks": {"choices": ["6,x"]}}}, "params.blocks: '6,x' can never build"),
    # an option no sampled arch takes
    ({"params": {"arch": {"choices": ["resnet20", "densenet"]}, "growth_rate": {"choices": [8, 12]}}},
     "params.growth_rate: resnet20 has no option 'growth_rate'; sample it only for densenet with "
     "when: {arch: [densenet]}"),
    ({"params": {"bottleneck": {"value": True}}}, "params.bottleneck: resnet20 has no option 'bottleneck'; remove it"),
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


def test_a_space_that_cannot_build_writes_nothing(tmp_path):
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text("params:\n  arch: {choices: [resnet20, vgg]}\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstorage: sqlite:///{tmp_path / 'study.db'}\n"
                     "data: {name: digits}\n")
    for command in ("run", "worker"):
        r = subprocess.run([sys.executable, "-m", "search", command, str(study)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"micronet-search: error: {tmp_path / 'space.yaml'}: params.arch: 'vgg' can "
                                    f"never build: unknown arch 'vgg'; known archs: densenet, resnet18, resnet20")
        assert not (tmp_path / "study.db").exists()


def test_enqueued_values_that_cannot_build_are_refused(tmp_path):
    from search.study.study_file import load_study_file

    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nenqueue:\n  - {{qw: 8}}\n  - {{qw: 64}}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: enqueue\[1\].qw: 64 can never build: qw must be one of"):
        load_study_file(study)


def test_the_shipped_spaces_and_studies_load():
    from pathlib import Path

    from search.study.study_file import load_study_file

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "studies").glob("*.yaml")):
        assert load_study_file(path).space.params


@pytest.mark.parametrize("data, needle", [
    ("{name: cifar10, path: DIR/no-cifar}", "CIFAR-10 not found"),
    ("{name: npz, path: DIR/missing.npz}", "npz dataset not found"),
])
def test_missing_data_is_found_before_the_study_is_created(tmp_path, data, needle):
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstorage: sqlite:///{tmp_path / 'study.db'}\n"
                     f"data: {data.replace('DIR', str(tmp_path))}\n")
    for command in ("run", "worker"):
        r = subprocess.run([sys.executable, "-m", "search", command, str(study)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert needle in r.stderr
        assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("url, needle", [
    ("foo://bar", "storage URL 'foo://bar' is not one that works here; use sqlite:///FILE.db, postgresql://"),
    ("postgres://u:s3cret@127.0.0.1/db", ": write postgresql://, not postgres://"),
    ("mysql+nosuchdriver://root@127.0.0.1/db", "its driver cannot be loaded (NoSuchModuleError: Can't load plugin: "
                                               "sqlalchemy.dialects:mysql.nosuchdriver); mysql+pymysql:// uses the "
                                               "installed one"),
    ("studies/x.db", "mysql+pymysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, journal:FILE"),
])
def test_a_storage_url_of_an_unknown_kind_names_the_forms_that_work(tmp_path, url, needle):
    import os
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\ndata: {{name: digits}}\n")
    for args in (["run", str(study), "--storage", url], ["front", "--storage", url, "--study", "s"]):
        r = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "MICRONET_STORAGE"})
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert needle in r.stderr and "s3cret" not in r.stderr
    assert not list(tmp_path.glob("**/*.db"))


def test_the_architecture_combinations_follow_the_conditions_and_stop_at_a_continuous_one(tmp_path):
    from search.space.params import architecture_names

    space = parse_space({"params": {
        "arch": {"choices": ["resnet20", "densenet"]},
        "width": {"low": 0.5, "high": 1.0, "step": 0.5, "when": {"arch": "resnet20"}},
        "groups": {"choices": [1, 3]},
        "depthwise": {"value": False},
        "growth_rate": {"choices": [8, 12], "when": {"arch": "densenet"}},
        "ps": {"low": 0.0, "high": 0.5},
    }})
    names = architecture_names(space.names())
    assert names == ["arch", "width", "groups", "depthwise", "growth_rate"]  # not ps: the compression
    combos = space.combinations(names)
    assert len(combos) == 2 * 2 + 2 * 2
    assert {"arch": "resnet20", "width": 1.0, "groups": 3, "depthwise": False} in combos
    assert {"arch": "densenet", "groups": 1, "depthwise": False, "growth_rate": 12} in combos
    assert all(("width" in c) == (c["arch"] == "resnet20") for c in combos)
    continuous = parse_space({"params": {"arch": {"value": "resnet20"}, "width": {"low": 0.25, "high": 1.0}}})
    assert continuous.combinations(["arch", "width"]) is None
