"""Inputs that could never train are refused with one line naming what is wrong: labels, classes, epochs, batch
sizes, synthetic sizes, the teacher's architecture."""

import numpy as np
import pytest

from search.candidate.recipe import TrainConfig
from search.errors import ConfigError, MicronetError
from search.training.data import DataConfig, DataError, load_data
from search.training.teacher import TeacherSpec


def npz(tmp_path, y_train, y_test=None, dtype=np.int64):
    n = len(y_train)
    path = tmp_path / "d.npz"
    y_test = y_train[:4] if y_test is None else y_test
    np.savez(path, x_train=np.zeros((n, 32, 32, 3), np.uint8), y_train=np.asarray(y_train, dtype),
             x_test=np.zeros((len(y_test), 32, 32, 3), np.uint8), y_test=np.asarray(y_test, dtype))
    return DataConfig(name="npz", path=str(path), val_fraction=0.25)


def test_an_absurd_label_is_refused_not_turned_into_a_huge_head(tmp_path):
    with pytest.raises(DataError, match=r"y_train has label 1000000000; expected classes 0..C-1 with C at most 10000"):
        load_data(npz(tmp_path, [0, 1, 2, 10**9] * 2))


def test_uint64_labels_that_would_wrap_to_negative_are_refused(tmp_path):
    with pytest.raises(DataError, match="y_train has label 18446744073709551615"):
        load_data(npz(tmp_path, [0, 1, 2, 2**64 - 1] * 2, dtype=np.uint64))


def test_plain_uint_labels_load(tmp_path):
    data = load_data(npz(tmp_path, [0, 1, 2, 3] * 4, dtype=np.uint8))
    assert data.num_classes == 4 and str(data.y_train.dtype) == "torch.int64"


def test_one_class_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"y_train holds one class \(3\); a classifier needs at least 2"):
        load_data(npz(tmp_path, [3] * 8))


@pytest.mark.parametrize("options, message", [
    ({"epochs": 1_000_000_000}, "epochs must be an integer from 1 to 10000, got 1000000000"),
    ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
    ({"eval_batch_size": 0}, "eval_batch_size must be an integer >= 1, got 0"),
])
def test_training_numbers_that_cannot_run_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("options, message", [
    ({"synthetic_size": 0}, "synthetic_size must be an integer >= 2, got 0"),
    ({"synthetic_classes": 1}, "synthetic_classes must be an integer >= 2, got 1"),
    ({"synthetic_classes": 10**9}, "synthetic_classes must be at most 10000"),
])
def test_synthetic_sizes_that_cannot_train_are_refused(options, message):
    with pytest.raises(DataError, match=message):
        DataConfig(name="synthetic", **options)


@pytest.mark.parametrize("arch", ["../../etc/x", "resnet99", ""])
def test_a_teacher_arch_must_be_a_registered_model(arch):
    # a name with ../ would put its cache file outside the cache
    with pytest.raises(ConfigError, match="teacher arch must be one of"):
        TeacherSpec(arch=arch)
    assert issubclass(ConfigError, MicronetError)


def test_an_empty_front_says_why_and_the_best_accuracy_reached():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from search.cli.front import why_empty
    from search.results.front import front_rows

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("micronet_config", {"accuracy_floor": 0.9})
    assert why_empty(study, None) == "no completed trial yet"
    for i, acc in enumerate((0.41, 0.63, 0.52, 0.60)):  # all under the floor: infeasible, off the front
        study.add_trial(create_trial(values=[acc, 0.01 * (i + 1)], params={"ps": i / 10},
                                     distributions={"ps": FloatDistribution(0, 1)},
                                     system_attrs={"constraints": (0.9 - acc,)}))
    assert front_rows(study) == []
    assert why_empty(study, None) == ("none of the 4 completed trials meets the accuracy floor 0.9; the best accuracy "
                                      "reached is 0.6300 (trial 1)")
    assert why_empty(study, 0.95) == ("no front member has accuracy >= 0.95; the best accuracy reached is 0.6300 "
                                      "(trial 1)")


def test_force_replaces_only_a_folder_with_nothing_but_an_export(tmp_path):
    from search.export.errors import ExportError
    from search.export.files import check_out_dir

    out = tmp_path / "model"
    (out / "state_dicts").mkdir(parents=True)
    for name in ("model_card.json", "README.md", "state_dict.pt", "model.torchscript.pt", "model.onnx",
                 "state_dicts/member-0.pt"):
        (out / name).write_text("x")
    assert check_out_dir(out, force=True) == out.resolve()  # an earlier export, whole
    with pytest.raises(ExportError, match="not empty"):
        check_out_dir(out, force=False)
    (out / "chapter-3.tex").write_text("a thesis chapter beside an old card")
    with pytest.raises(ExportError, match=r"holds chapter-3.tex besides an earlier export; --force replaces only"):
        check_out_dir(out, force=True)
    (out / "chapter-3.tex").unlink()
    (out / "state_dicts" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds state_dicts besides an earlier export"):
        check_out_dir(out, force=True)
    (out / "state_dicts" / "notes.txt").unlink()
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(tmp_path / "elsewhere.md")  # a link is no file an export wrote
    with pytest.raises(ExportError, match="holds README.md besides"):
        check_out_dir(out, force=True)


def test_the_teacher_cache_is_keyed_by_the_datas_content_not_its_file_name(tmp_path):
    from search.training.teacher import get_teacher

    spec = TeacherSpec(arch="resnet20", width=0.25, epochs=1)
    teachers = []
    for folder, labels in (("a", [0, 1] * 8), ("b", [1, 0] * 8)):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "train.npz"
        n = len(labels)
        np.savez(path, x_train=np.arange(n * 3072, dtype=np.uint8).reshape(n, 32, 32, 3), y_train=np.array(labels),
                 x_test=np.zeros((4, 32, 32, 3), np.uint8), y_test=np.array([0, 1, 0, 1]))
        config = DataConfig(name="npz", path=str(path), val_fraction=0.25)
        get_teacher(spec, config, load_data(config), root=tmp_path / "cache")
        teachers.append(sorted(p.name for p in (tmp_path / "cache" / "teachers").iterdir()))
    # same file name, other images: a second teacher, not the first one reused
    assert len(teachers[0]) == 1 and len(teachers[1]) == 2
    assert all(name.startswith("resnet20-w0.25-npz-train.npz-val0.25s0-d") for name in teachers[1])


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path):
    import os
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = {"batch_label": "b", "labels": [0, 1] * 5, "data": np.zeros((10, 3072), np.uint8),
            "filenames": ["x"] * 10}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        payload = {**good, "data": Evil()} if i == 2 else good
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2 + i % 4))
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR python batch .*(os|posix)\.system"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))
    assert not marker.exists()
    (folder / "data_batch_3").write_bytes(pickle.dumps(good, protocol=5))
    assert len(load_data(DataConfig(name="cifar10", path=str(tmp_path), val_fraction=0.2)).y_train) == 40


def test_export_measures_on_the_studys_data_not_the_one_a_checkpoint_names():
    import optuna

    from search.export.load import study_data, with_data_path

    study = optuna.create_study(directions=["maximize", "minimize"])
    crafted = {"data": {"name": "cifar10", "path": "/shared/planted"}}  # what a crafted checkpoint would say
    assert study_data(study, crafted) == crafted["data"]  # a study made before its configuration was stored
    study.set_user_attr("micronet_config", {"data": {"name": "npz", "path": "studies/dev.npz"}})
    assert study_data(study, crafted) == {"name": "npz", "path": "studies/dev.npz"}
    assert with_data_path(study_data(study, crafted), "/data/mine.npz")["path"] == "/data/mine.npz"


def test_the_hypervolume_history_equals_the_brute_force_and_computes_only_when_the_front_changes(monkeypatch):
    import optuna
    from optuna.trial import create_trial

    from search.results.front import hypervolume_history
    from search.trial.objectives import Objectives

    rng = np.random.default_rng(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(400):
        study.add_trial(create_trial(values=[float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.001, 0.2))],
                                     params={}, distributions={}))
    objectives = Objectives.of_study(study)
    reference = (0.0, 0.25)
    calls = []
    real = Objectives.hypervolume
    monkeypatch.setattr(Objectives, "hypervolume", lambda self, points, ref: calls.append(len(points)) or real(
        self, points, ref))
    history = hypervolume_history(study, reference)
    monkeypatch.setattr(Objectives, "hypervolume", real)
    trials = study.get_trials()
    brute = [objectives.hypervolume([t.values for t in trials[:i + 1]], reference) for i in range(len(trials))]
    assert [h for _, h in history] == pytest.approx(brute, rel=1e-12)
    assert len(calls) < 60 and max(calls) < 30  # computed when the front changed, on the front alone
