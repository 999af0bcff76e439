"""A folder of images (torchvision's ImageFolder layout) as a dataset: read once, resized, held as uint8 tensors."""

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
from PIL import Image

from search.study.runner import run_study
from search.study.study_file import load_study_file
from search.training.data import DataConfig, DataError, load_data

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def make_folder(root, per_class=12, sizes=((40, 40), (24, 30)), split=False, fmt="png"):
    """Class folders of noisy solid-colour images in two sizes (so resizing is exercised), optionally as
    train/ and test/."""
    rng = np.random.default_rng(0)
    parts = {"train": per_class, "test": per_class // 3} if split else {"": per_class}
    for part, n in parts.items():
        for name, colour in COLOURS.items():
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{fmt}")
    return root


def test_one_folder_is_split_and_resized(tmp_path):
    root = make_folder(tmp_path / "imgs")
    data = load_data(DataConfig(name="folder", path=str(root), val_fraction=0.2))
    assert data.num_classes == 3
    assert data.x_train.shape[1:] == (3, 32, 32) and data.x_train.dtype.is_floating_point is False
    n = len(data.y_train) + len(data.y_val) + len(data.y_test)
    assert n == 36 and len(data.y_test) == 3 * round(0.2 * 12)  # a stratified fifth of each class for testing
    # the colour of each class survives the resize: classes in sorted order (blue, green, red), red is class 2
    red = data.x_train[data.y_train == 2].float().mean((0, 2, 3))
    assert red[0] > red[1] and red[0] > red[2]
    again = load_data(DataConfig(name="folder", path=str(root), val_fraction=0.2, seed=5))
    assert (again.y_test == data.y_test).all()  # the test split does not move with the study's seed


def test_train_and_test_folders(tmp_path):
    root = make_folder(tmp_path / "imgs", split=True, fmt="jpg")
    data = load_data(DataConfig(name="folder", path=str(root), val_fraction=0.25))
    assert len(data.y_test) == 3 * 4 and len(data.y_train) + len(data.y_val) == 3 * 12


@pytest.mark.parametrize("damage, fragment", [
    (lambda r: [p.unlink() for p in (r / "red").iterdir()], "class folder red has no images"),
    (lambda r: (r / "green" / "5.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda r: [(r / c).rename(r / ".." / f"away-{c}") for c in COLOURS], "has no class folders"),
])
def test_bad_folders_are_one_line(tmp_path, damage, fragment):
    root = make_folder(tmp_path / "imgs")
    damage(root)
    with pytest.raises(DataError, match=fragment) as e:
        load_data(DataConfig(name="folder", path=str(root)))
    if "cannot read" in fragment:
        assert "5.png" in str(e.value)  # the file is named


def test_train_and_test_with_other_classes(tmp_path):
    root = make_folder(tmp_path / "imgs", split=True)
    (root / "test" / "blue").rename(root / "test" / "cyan")
    with pytest.raises(DataError, match=r"different classes \(only in train: blue; only in test: cyan\)"):
        load_data(DataConfig(name="folder", path=str(root)))
    with pytest.raises(DataError, match="image folder not found"):
        load_data(DataConfig(name="folder", path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="image_size must be an integer from 8 to 512"):
        DataConfig(name="folder", path=str(root), image_size=4)
    with pytest.raises(DataError, match=r"expected N×48×48×3"):  # data of another size than asked for
        load_data(DataConfig(name="digits", image_size=48))


def test_images_of_another_size_train_score_and_export(tmp_path):
    """At image_size 48 the MACs (and so the score) are those of 48×48 inputs, and the export takes 48×48."""
    from search.candidate.candidate import Candidate, footprint
    from search.cli import main

    root = make_folder(tmp_path / "imgs", per_class=16, sizes=((50, 60), (40, 40)))
    data = load_data(DataConfig(name="folder", path=str(root), image_size=48))
    assert data.x_train.shape[1:] == (3, 48, 48)
    cand = Candidate(arch="resnet20", width=0.25)
    at32, at48 = footprint(cand, 3), footprint(cand, 3, input_size=(3, 48, 48))
    assert at48.dense.params == at32.dense.params
    assert at48.dense.macs == pytest.approx(at32.dense.macs * (48 / 32) ** 2, rel=0.01)  # convs scale with pixels
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  qw: {choices: [8]}\n  ps: {value: 0.3}\n")
    (tmp_path / "s.yaml").write_text(f"""\
name: big
space: space.yaml
storage: sqlite:///{tmp_path / 's.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: folder, path: imgs, val_fraction: 0.25, image_size: 48}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 2, batch_size: 8}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 1
""")
    study = run_study(load_study_file(tmp_path / "s.yaml"))
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["dense_macs"] == at48.dense.macs
    rc = main(["export", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "big", "--trial", "0",
               "--out", str(tmp_path / "model"), "--verify"])
    assert rc == 0
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["preprocessing"]["input_shape"] == [3, 48, 48]
    assert "N×3×48×48" in (tmp_path / "model" / "README.md").read_text()


def test_a_folder_trains_through_train_and_through_a_study(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=16)
    out = subprocess.run([sys.executable, "-m", "search", "train", "--arch", "resnet20", "--width", "0.25",
                          "--epochs", "2", "--batch-size", "8", "--dataset", "folder", "--data-path", str(root),
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "folder" and summary["val_accuracy"] > 0.5  # three solid colours: easy
    bad = subprocess.run([sys.executable, "-m", "search", "train", "--arch", "resnet20", "--dataset", "folder",
                          "--data-path", str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "image folder not found" in bad.stderr and "Traceback" not in bad.stderr

    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  qw: {choices: [8, 32]}\n")
    (tmp_path / "s.yaml").write_text(f"""\
name: folder
space: space.yaml
storage: sqlite:///{tmp_path / 's.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: folder, path: imgs, val_fraction: 0.25}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 2, batch_size: 8}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 2
""")
    study = run_study(load_study_file(tmp_path / "s.yaml"))  # imgs/ found next to the study file
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
