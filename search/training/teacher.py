"""Distillation teachers: trained once per (arch, dataset, epochs, seed) and cached, so trials and workers share one.

The teacher trains on the training split only (not the validation split), so students' validation accuracy stays an
honest estimate.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search import __version__
from search.candidate.recipe import MAX_EPOCHS, TrainConfig
from search.errors import ConfigError, MicronetError
from search.models import build_model
from search.training.data import DataConfig, Splits, data_digest
from search.training.trainer import EpochCallback, Trainer


class TeacherError(MicronetError):
    """A teacher checkpoint that is missing or cannot be read."""


def cache_dir() -> Path:
    return Path(os.environ.get("MICRONET_CACHE", Path.home() / ".cache" / "micronet-search"))


@dataclass(frozen=True)
class TeacherSpec:
    arch: str = "resnet18"
    epochs: int = 30
    seed: int = 0
    width: float = 1.0
    lr: float = 0.1

    def __post_init__(self):
        from search.models import list_models

        if self.arch not in list_models():  # also what keeps its cache file inside the cache: no "../" in a name
            raise ConfigError(f"teacher arch must be one of {', '.join(list_models())}, got {self.arch!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"teacher epochs must be an integer from 1 to {MAX_EPOCHS}, got {self.epochs!r}")

    def key(self, data: DataConfig, digest: str | None = None) -> str:
        """The teacher's name in the cache; ``digest`` (:func:`search.training.data.data_digest`) keys it by the
        data's content, so two files of one name (``/a/train.npz``, ``/b/train.npz``) get a teacher each."""
        width = "" if self.width == 1.0 else f"-w{self.width:g}"
        content = f"-d{digest}" if digest else ""
        return f"{self.arch}{width}-{data.key()}{content}-e{self.epochs}-s{self.seed}-lr{self.lr:g}"

    def path(self, data: DataConfig, root: Path | None = None, digest: str | None = None) -> Path:
        return (root or cache_dir()) / "teachers" / f"{self.key(data, digest)}.pt"


def train_teacher(spec: TeacherSpec, data_config: DataConfig, data: Splits, root: Path | None = None,
                  on_epoch: EpochCallback | None = None) -> tuple[nn.Module, Path, float]:
    """Train the teacher and write it to the cache atomically; returns (model, path, validation accuracy)."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.arch, num_classes=data.num_classes, width=spec.width).to(data.device)
    trainer = Trainer(model, data, TrainConfig(epochs=spec.epochs, lr=spec.lr, seed=spec.seed, label_smoothing=0.1),
                      on_epoch=on_epoch)
    trainer.run()
    val = trainer.history[-1].val_accuracy
    path = spec.path(data_config, root, data_digest(data))
    save_checkpoint(path, {
        "kind": "teacher", "arch": spec.arch, "width": spec.width, "num_classes": data.num_classes,
        "key": spec.key(data_config, data_digest(data)), "val_accuracy": val, "state_dict": model.state_dict(),
        "version": __version__,
    })
    return model.eval(), path, val


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_teacher(path: Path, num_classes: int | None = None, device="cpu") -> nn.Module:
    """Load a cached teacher in eval mode with gradients off; a damaged file raises :class:`TeacherError`."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher checkpoint {path} not found; train it with 'micronet-search teacher'")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        model = build_model(payload["arch"], num_classes=payload["num_classes"], width=payload.get("width", 1.0))
        model.load_state_dict(payload["state_dict"])
    except Exception as e:
        raise TeacherError(f"teacher checkpoint {path} is corrupt ({type(e).__name__}); delete it and train the "
                           f"teacher again with 'micronet-search teacher'") from None
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise TeacherError(f"teacher checkpoint {path} predicts {payload['num_classes']} classes, the dataset has "
                           f"{num_classes}; train a teacher on this dataset")
    return model.to(device).eval().requires_grad_(False)


def get_teacher(spec: TeacherSpec, data_config: DataConfig, data: Splits, root: Path | None = None,
                on_epoch: EpochCallback | None = None) -> nn.Module:
    """The cached teacher for ``spec`` on this dataset, trained first if the cache has none."""
    path = spec.path(data_config, root, data_digest(data))
    if path.is_file():
        return load_teacher(path, data.num_classes, data.device)
    model, _, _ = train_teacher(spec, data_config, data, root, on_epoch)
    return model


def cached_or_trained(spec: TeacherSpec, data_config: DataConfig, data: Splits, force: bool = False,
                      on_epoch: EpochCallback | None = None) -> tuple[Path, bool, float | None]:
    """The ``teacher`` command's teacher: (its file, whether it came from the cache, its validation accuracy when
    trained now). A cached file is loaded once, so a damaged one fails here; ``force`` trains again."""
    path = spec.path(data_config, digest=data_digest(data))
    if path.is_file() and not force:
        load_teacher(path, data.num_classes, data.device)
        return path, True, None
    _, path, val = train_teacher(spec, data_config, data, on_epoch=on_epoch)
    return path, False, val


def get_shared_teacher(spec: TeacherSpec, data_config: DataConfig, data: Splits, study, artifact_store, lock,
                       on_epoch: EpochCallback | None = None, on_event=None) -> nn.Module:
    """The study's teacher, trained by exactly one of its workers.

    The first worker to take ``lock`` trains it (or takes it from its local cache) and uploads it to the study's
    artifact store; the others wait on the lock, then download it. The study attribute naming the artifact is set
    only after the upload, so a worker that dies while training leaves nothing half-done behind: the lock goes
    with its database session and the next worker trains.
    """
    import optuna

    attr = f"teacher_artifact:{spec.key(data_config, data_digest(data))}"
    path = spec.path(data_config, digest=data_digest(data))
    say = on_event or (lambda text: None)

    def fetch(artifact_id: str) -> nn.Module:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.download")
            tmp.unlink(missing_ok=True)
            optuna.artifacts.download_artifact(artifact_store=artifact_store, artifact_id=artifact_id,
                                               file_path=str(tmp))
            os.replace(tmp, path)
            say(f"teacher {path.stem}: downloaded from the study's artifacts")
        return load_teacher(path, data.num_classes, data.device)

    if attr in study.user_attrs:
        return fetch(study.user_attrs[attr])
    with lock:
        stored = study.user_attrs.get(attr)  # read again: another worker may have finished while we waited
        if stored is not None:
            return fetch(stored)
        if path.is_file():
            model = load_teacher(path, data.num_classes, data.device)
            say(f"teacher {path.stem}: loaded from {path}")
        else:
            say(f"teacher {path.stem}: training ({spec.epochs} epochs, once for all workers)")
            model, _, val = train_teacher(spec, data_config, data, on_epoch=on_epoch)
            say(f"teacher {path.stem}: trained, validation accuracy {val:.2%}")
        artifact_id = optuna.artifacts.upload_artifact(artifact_store=artifact_store, file_path=str(path),
                                                       study_or_trial=study, mimetype="application/octet-stream")
        study.set_user_attr(attr, artifact_id)
    return model
