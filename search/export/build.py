"""The two exports: one trial's model (:func:`export_model`) and a majority-vote ensemble (:func:`export_ensemble`).
Everything is checked before anything is written; the folder appears only once complete."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from search.export.card import SCORE_CONVENTION, common_card, costs_card, finish_card, sum_or_none, write_card
from search.export.choose import require_checkpoint
from search.export.errors import ExportError
from search.export.files import (
    FORMATS,
    MEMBERS_DIR,
    STATE_DICT_FILE,
    check_onnx_packages,
    check_out_dir,
    parse_formats,
    publish,
    write_graphs,
)
from search.export.load import load_test_data, load_trial_model, study_data, with_data_path
from search.export.onnx_tolerance import onnx_check
from search.export.verification import Verification, verify
from search.export.vote import VOTE_RULE, MajorityVote
from search.results.front import front_trials
from search.training.data import normalize
from search.training.trainer import evaluate
from search.trial.objectives import Objectives


@dataclass
class ExportResult:
    out: Path
    card: dict
    verify: Verification | None = None


def export_model(study: optuna.Study, trial: FrozenTrial, out: str | Path, formats=FORMATS, force: bool = False,
                 verify_export: bool = False, data_path: str | None = None) -> ExportResult:
    """Export one trial's model into the folder ``out``.

    Everything is checked (the folder, the trial, the checkpoint, the dataset) before anything is written, and the
    folder appears only once complete. With ``verify_export`` the written files are reloaded and checked before
    the folder is put in place; a mismatch raises :class:`VerificationError` and leaves ``out`` untouched.
    """
    formats = parse_formats(formats)
    check_onnx_packages(formats, verify_export)
    out = check_out_dir(out, force)
    require_checkpoint(trial)
    with tempfile.TemporaryDirectory(prefix="micronet-export-") as work:
        model, meta = load_trial_model(study, trial, work)
    data_config = with_data_path(study_data(study, meta), data_path)
    data = load_test_data(data_config)
    mean, std = meta["mean"], meta["std"]
    test_accuracy = evaluate(model, data.x_test, data.y_test, mean, std)
    card = {
        "kind": "model", "study": study.study_name, "trial": trial.number,
        "on_front": trial.number in {t.number for t in front_trials(study)},
        "candidate": meta["candidate"], "num_classes": meta["num_classes"],
        **costs_card(study, trial, model),
        "val_accuracy": Objectives.of_study(study).accuracy(trial), "test_accuracy": test_accuracy,
        **common_card(data_config, data, meta, formats, output="logits"),
    }
    if "onnx" in formats:
        card["onnx_check"] = onnx_check(model, data.x_test, mean, std)

    def write(folder: Path) -> Verification | None:
        files = {}
        if "state_dict" in formats:
            torch.save(model.state_dict(), folder / STATE_DICT_FILE)
            files["state_dict"] = STATE_DICT_FILE
        files.update(write_graphs(model, folder, formats, normalize(data.x_test[:2], mean, std), "logits"))
        finish_card(card, files)
        write_card(folder, card)
        return verify(folder, data=data, reference=model) if verify_export else None

    return ExportResult(out, card, publish(out, force, write))


def export_ensemble(study: optuna.Study, members: Sequence[FrozenTrial], out: str | Path, formats=FORMATS,
                    force: bool = False, verify_export: bool = False, data_path: str | None = None) -> ExportResult:
    """Export the majority vote of ``members`` (see :class:`MajorityVote`) into the folder ``out``.

    Writes the ensemble as one TorchScript and one ONNX graph, and each member's state dict under ``state_dicts/``.
    The card lists the members and gives the ensemble's score by seed 000's convention: the sum of the members'
    scores. Same checks and atomicity as :func:`export_model`.
    """
    formats = parse_formats(formats)
    check_onnx_packages(formats, verify_export)
    out = check_out_dir(out, force)
    if len(members) < 2:
        raise ExportError(f"an ensemble needs at least 2 members, got {len(members)}")
    for t in members:
        require_checkpoint(t)
    with tempfile.TemporaryDirectory(prefix="micronet-export-") as work:
        loaded = [load_trial_model(study, t, work) for t in members]
    meta = loaded[0][1]
    for t, (_, other) in zip(members[1:], loaded[1:], strict=True):
        for key in ("num_classes", "data", "mean", "std"):
            if other[key] != meta[key]:
                raise ExportError(f"trials {members[0].number} and {t.number} were trained on different data "
                                  f"({key} differs); ensemble members must share the dataset")
    data_config = with_data_path(study_data(study, meta), data_path)
    data = load_test_data(data_config)
    mean, std = meta["mean"], meta["std"]
    ensemble = MajorityVote([m for m, _ in loaded]).eval()
    front = {t.number for t in front_trials(study)}
    rows = []
    for t, (model, m_meta) in zip(members, loaded, strict=True):
        rows.append({
            "trial": t.number, "on_front": t.number in front, "candidate": m_meta["candidate"],
            **costs_card(study, t, model), "val_accuracy": Objectives.of_study(study).accuracy(t),
            "test_accuracy": evaluate(model, data.x_test, data.y_test, mean, std),
        })
    card = {
        "kind": "ensemble", "study": study.study_name, "trials": [t.number for t in members],
        "num_classes": meta["num_classes"], "vote": VOTE_RULE,
        "score": sum(r["score"] for r in rows), "score_convention": SCORE_CONVENTION,
        "measured_score": sum_or_none(r["measured_score"] for r in rows),
        "complexity": {k: sum_or_none(r["complexity"][k] for r in rows) for k in rows[0]["complexity"]},
        "val_accuracy": evaluate(ensemble, data.x_val, data.y_val, mean, std),
        "val_accuracy_note": "the vote's accuracy on the validation split, measured at export",
        "test_accuracy": evaluate(ensemble, data.x_test, data.y_test, mean, std),
        "members": rows,
        **common_card(data_config, data, meta, formats, output="scores"),
    }
    if "onnx" in formats:
        card["onnx_check"] = onnx_check(ensemble, data.x_test, mean, std)

    def write(folder: Path) -> Verification | None:
        files = {}
        if "state_dict" in formats:
            (folder / MEMBERS_DIR).mkdir()
            for row, (model, _) in zip(rows, loaded, strict=True):
                name = f"{MEMBERS_DIR}/trial-{row['trial']}.pt"
                torch.save(model.state_dict(), folder / name)
                row["state_dict"] = name
            files["state_dict"] = MEMBERS_DIR
        files.update(write_graphs(ensemble, folder, formats, normalize(data.x_test[:2], mean, std), "scores"))
        finish_card(card, files)
        write_card(folder, card)
        return verify(folder, data=data, reference=ensemble) if verify_export else None

    return ExportResult(out, card, publish(out, force, write))
