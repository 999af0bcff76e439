"""Loading: a trial's checkpoint from the study's artifact store (physically pruned, quantized weights baked in),
an export's card and state dict, the test data of a card."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from search.candidate.candidate import Candidate
from search.compress import bake_weights
from search.config import from_mapping
from search.export.card import CARD
from search.export.choose import require_checkpoint
from search.export.errors import ExportError
from search.export.vote import MajorityVote
from search.study.storage import existing_artifact_store
from search.training.checkpoint import CheckpointError, load_candidate_checkpoint, rebuild
from search.training.data import DataConfig, Splits, load_data
from search.trial.record import TrialRecord


def load_trial_model(study: optuna.Study, trial: FrozenTrial, workdir: str | Path) -> tuple[nn.Module, dict]:
    """The trial's trained model (eval mode, CPU) with baked weights, and its checkpoint metadata.

    The checkpoint is downloaded from the study's artifact store (the ``artifact_dir`` study attribute) into
    ``workdir``.
    """
    require_checkpoint(trial)
    store_dir = study.user_attrs.get("artifact_dir")
    if not store_dir:
        raise ExportError(f"study {study.study_name!r} records no artifact_dir, so its checkpoints cannot be found; "
                          f"was it created by 'micronet-search run'?")
    if not Path(store_dir).is_dir():
        raise ExportError(f"the artifact store {store_dir} of study {study.study_name!r} does not exist (moved, or "
                          f"on another machine?)")
    artifact_id = TrialRecord.of(trial).checkpoint_artifact_id
    where = Path(store_dir) / artifact_id
    path = Path(workdir) / f"trial-{trial.number}.pt"
    try:
        optuna.artifacts.download_artifact(artifact_store=existing_artifact_store(store_dir),
                                           artifact_id=artifact_id, file_path=str(path))
    except Exception as e:
        raise ExportError(f"cannot read the checkpoint of trial {trial.number} ({where}): "
                          f"{type(e).__name__}") from None
    try:
        model, meta = load_candidate_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"trial {trial.number}: {str(e).replace(str(path), str(where))}") from None
    bake_weights(model)
    return model.eval(), meta


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        raise ExportError(f"{folder} holds no {CARD}; is it a micronet-search export?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None


def load_state_dict_model(folder: str | Path) -> nn.Module:
    """Rebuild an exported model (or ensemble) from its state dicts and card, in eval mode on the CPU.

    The model is rebuilt as the checkpoint was (build, structured pruning, quantization), its weights are baked
    like the export's, and the state dict is loaded.
    """
    folder = Path(folder)
    card = read_card(folder)
    if "state_dict" not in card.get("files", {}):
        raise ExportError(f"{folder} has no state dict export (formats: {', '.join(card.get('files', {}))})")
    if card["kind"] == "ensemble":
        members = [_rebuild_baked(m["candidate"], card["num_classes"], folder / m["state_dict"])
                   for m in card["members"]]
        return MajorityVote(members).eval()
    return _rebuild_baked(card["candidate"], card["num_classes"], folder / card["files"]["state_dict"])


def _rebuild_baked(candidate: dict, num_classes: int, path: Path) -> nn.Module:
    model = bake_weights(rebuild(Candidate.from_dict(candidate), num_classes))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_test_data(data_config: dict) -> Splits:
    """The dataset of a checkpoint or card (its ``data`` mapping), loaded on the CPU."""
    return load_data(from_mapping(DataConfig, dict(data_config), "checkpoint data"))


def study_data(study: optuna.Study, meta: dict) -> dict:
    """The dataset an export measures on: the study's own (its stored configuration), never the checkpoint's. A
    checkpoint is a file in a shared store that anyone with write access could have crafted to name some other
    dataset at some other path; the checkpoint's is used only for a study made before the configuration was stored.
    ``--data-path`` still replaces the path (:func:`with_data_path`)."""
    stored = (study.user_attrs.get("micronet_config") or {}).get("data")
    return dict(stored) if isinstance(stored, dict) else dict(meta["data"])


def with_data_path(values: dict, data_path: str | None) -> dict:
    """A copy of a checkpoint's or card's data config, its ``path`` replaced by ``data_path`` (``--data-path``)."""
    values = dict(values)
    if data_path is not None:
        values["path"] = str(data_path)
    return values
