"""Export a trained candidate, or a majority-vote ensemble of several, for deployment.

The pieces, in the order the commands use them:

- :func:`select_trial` / :func:`select_members`: which trial(s) of a study to export (a trial number, the cheapest
  front member above an accuracy, the front's knee; explicit trials or the top-k front members by accuracy);
- :func:`load_trial_model`: the trial's checkpoint from the study's artifact store, loaded (physically pruned,
  unstructured zeros permanent) with the quantized weights baked in (:func:`search.compress.bake_weights`); the
  activation quantizers stay in the graph;
- :func:`export_model` / :func:`export_ensemble`: measure the test accuracy now, then write TorchScript, ONNX, state
  dicts, ``model_card.json`` and a ``README.md`` into a temporary sibling of the output folder, and rename it into
  place at the end, so the output folder is either complete or untouched;
- :func:`verify`: reload every written artifact and re-evaluate it on the test split against the card; the ONNX
  outputs must match torch's within the tolerance :func:`onnx_check` derived from the model's quantizers.

Every exported model takes a float tensor N×3×H×W (the data's image size) that is already normalized: uint8 RGB →
/255 → (x - mean) / std with the mean and std (0..1 scale) of the study's training split, recorded in the card.
The ensemble outputs scores whose argmax is the majority vote of its members (see :class:`MajorityVote`).

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo exporter
(torch 2.14 with onnxscript 0.7) cannot translate the activation quantizer's whole-tensor ``amax()``, while the
TorchScript-based one handles it and needs only the ``onnx`` package.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search import __version__
from search.candidate import Candidate
from search.checkpoint import CheckpointError, load_candidate_checkpoint, rebuild
from search.complexity import count_nonzero_params
from search.compress import QuantAct, bake_weights, quantization_of
from search.compress.compression import Compression
from search.config import from_mapping
from search.data import DataConfig, Splits, load_data, normalize
from search.errors import MicronetError
from search.front import front_trials
from search.models.flip import FlipAverage
from search.objectives import DEFAULT as DEFAULT_OBJECTIVES
from search.objectives import Objectives
from search.record import TrialRecord
from search.score import ScoreReference, compute_score
from search.train import evaluate, predict

FORMATS = ("torchscript", "onnx", "state_dict")
CARD = "model_card.json"
README = "README.md"
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
STATE_DICT_FILE = "state_dict.pt"
MEMBERS_DIR = "state_dicts"      # an ensemble's members, one state dict each
ONNX_OPSET = 17
ACCURACY_TOLERANCE = 0.005       # verify: |accuracy of a reloaded artifact - card| (absolute)
LOGIT_TOLERANCE = 1e-3           # verify: |ONNX output - torch output| of a graph without rounding (see onnx_check)
JITTER = 2.0 ** -22              # onnx_check: perturbation of each quantizer input, in units of |x| + mean |x|
FLIP_MARGIN = 2.0                # onnx_check: allowed / simulated movement of the outputs by boundary flips
TOP1_AGREEMENT = 0.99            # verify, ensembles: ONNX and torch predict the same class this often
SCORE_CONVENTION = "seed 000's convention: the sum of the members' scores"
VOTE_RULE = ("majority vote of the members' top-1 predictions; ties are broken by the members' summed softmax "
             "probabilities. The output is votes + summed_softmax / (members + 1): the second term is below 1, so "
             "it only orders classes with equal votes, and argmax(output) is the vote")
PREPROCESSING = ("uint8 RGB image H×W×3 (the size of input_shape) → C×H×W float → /255 → (x - mean) / std per "
                 "channel; input N×3×H×W float32")


class ExportError(MicronetError):
    """An export that cannot be made: an unknown trial, no checkpoint, an unusable output folder."""


class VerificationError(Exception):
    """A reloaded artifact disagrees with the model card (not bad input: the export itself is wrong)."""


# ---------------------------------------------------------------------------------------------------------------
# Choosing trials


def select_trial(study: optuna.Study, trial: int | None = None, min_accuracy: float | None = None,
                 knee: bool = False, max_latency_ms: float | None = None,
                 mixed_hardware: bool = False) -> FrozenTrial:
    """The trial to export: exactly one of ``trial`` (a number), bounds (``min_accuracy``, ``max_latency_ms``, one
    or both) or ``knee``.

    - ``trial``: that trial, which must be complete with a checkpoint (it need not be on the front);
    - ``min_accuracy``: the front member with the lowest first cost (the score) whose validation accuracy is at
      least ``min_accuracy`` (and whose latency is at most ``max_latency_ms``, if given);
    - ``max_latency_ms`` alone: the most accurate front member whose measured latency is at most that;
    - ``knee``: the front's knee, see :func:`knee_trial`.
    """
    bounds = min_accuracy is not None or max_latency_ms is not None
    if sum((trial is not None, bounds, bool(knee))) != 1:
        raise ExportError("choose the trial with exactly one of --trial N, --knee, or bounds (--min-accuracy A, "
                          "--max-latency-ms L, or both)")
    if trial is not None:
        return trial_with_checkpoint(study, trial)
    front = _front(study, mixed_hardware)
    objectives = Objectives.of_study(study)
    if knee:
        return knee_trial(front, objectives)
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ExportError(f"--min-accuracy is a validation accuracy in [0, 1], got {min_accuracy:g}")
    if max_latency_ms is not None and objectives.get("latency") is None:
        raise ExportError(f"--max-latency-ms: study {study.study_name!r} does not measure latency (its objectives: "
                          f"{', '.join(objectives.names)}); add latency to the study file's objectives")
    fits = [t for t in front  # sorted by the first cost, lowest first
            if (min_accuracy is None or objectives.accuracy(t) >= min_accuracy)
            and (max_latency_ms is None or objectives.value(t, "latency") <= max_latency_ms)]
    if fits:
        return fits[0] if min_accuracy is not None else max(fits, key=lambda t: (objectives.accuracy(t), -t.number))
    if min_accuracy is not None and not any(objectives.accuracy(t) >= min_accuracy for t in front):
        best = max(front, key=lambda t: (objectives.accuracy(t), -objectives.first_cost(t)))
        raise ExportError(f"no Pareto-front member of study {study.study_name!r} reaches validation accuracy "
                          f"{min_accuracy:g}; the best is {objectives.accuracy(best):.4f} (trial {best.number})")
    fastest = min(front, key=lambda t: objectives.value(t, "latency"))
    raise ExportError(f"no Pareto-front member of study {study.study_name!r} meets "
                      f"{'validation accuracy ' + format(min_accuracy, 'g') + ' and ' if min_accuracy else ''}"
                      f"latency {max_latency_ms:g} ms; the fastest takes {objectives.value(fastest, 'latency'):.3f} ms "
                      f"(trial {fastest.number})")


def knee_trial(front: Sequence[FrozenTrial], objectives: Objectives | None = None) -> FrozenTrial:
    """The knee of a front.

    Two objectives (accuracy and a cost): with three or more members both are normalized over the front to [0, 1]
    and the knee is the member farthest from the straight line between the two extreme members (the lowest and the
    highest cost); a tie goes to the lower cost. With one or two members (or a front that is a straight line) there
    is no bend: the knee is then the member with the most validation accuracy per unit of cost (accuracy / cost),
    the best balance of the two; a zero cost counts as infinitely efficient.

    More objectives: a line between two extremes has no N-D counterpart that keeps its meaning, so the knee is the
    member closest (Euclidean) to the ideal point after each objective is normalized over the front to [0, 1], best
    at 1 (compromise programming); ties go to the lower first cost.
    """
    if not front:
        raise ExportError("the Pareto front is empty: no completed trial yet")
    objectives = objectives or Objectives.parse(DEFAULT_OBJECTIVES)
    members = sorted(front, key=lambda t: (objectives.first_cost(t), -objectives.accuracy(t), t.number))
    if len(objectives) > 2:
        return _ideal_nearest(members, objectives)
    cost = objectives.costs[0].name
    if len(members) >= 3:
        acc = np.array([objectives.accuracy(t) for t in members], dtype=np.float64)
        score = np.array([objectives.value(t, cost) for t in members], dtype=np.float64)
        a = (acc - acc.min()) / (np.ptp(acc) or 1.0)
        s = (score - score.min()) / (np.ptp(score) or 1.0)
        (s0, a0), (s1, a1) = (s[0], a[0]), (s[-1], a[-1])
        length = math.hypot(s1 - s0, a1 - a0)
        if length > 0:
            distance = np.abs((s1 - s0) * (a0 - a) - (s0 - s) * (a1 - a0)) / length
            best = int(np.argmax(distance))  # the first maximum: the lowest score among ties
            if distance[best] > 1e-12:
                return members[best]
    return max(members, key=lambda t: (_efficiency(objectives, t), -objectives.first_cost(t), -t.number))


def _efficiency(objectives: Objectives, t: FrozenTrial) -> float:
    accuracy, cost = objectives.accuracy(t), objectives.first_cost(t)
    return math.inf if cost <= 0 else accuracy / cost


def _ideal_nearest(members: list[FrozenTrial], objectives: Objectives) -> FrozenTrial:
    goodness = np.array([[-x for x in objectives.loss(t.values)] for t in members], dtype=np.float64)
    span = np.ptp(goodness, axis=0)
    normalized = (goodness - goodness.min(axis=0)) / np.where(span > 0, span, 1.0)
    distance = np.linalg.norm(1.0 - normalized, axis=1)
    return members[int(np.argmin(distance))]  # the first minimum: members are sorted by the first cost


def select_members(study: optuna.Study, trials: Sequence[int] | None = None, top_k: int | None = None
                   ) -> list[FrozenTrial]:
    """An ensemble's members: the given trial numbers, or the ``top_k`` front members with the best accuracy.

    Given trials must be complete with a checkpoint; they need not be on the front (the card says which are).
    ``top_k`` breaks accuracy ties by the lower score. At least two members are needed.
    """
    if (trials is None) == (top_k is None):
        raise ExportError("choose the members with exactly one of --trials N,N,... or --top-k K")
    if trials is not None:
        numbers = list(trials)
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            raise ExportError(f"trial {repeated[0]} is given twice; each member once")
        if len(numbers) < 2:
            raise ExportError(f"an ensemble needs at least 2 members, got {len(numbers)}; export one model with "
                              f"'micronet-search export --trial N'")
        return [trial_with_checkpoint(study, n) for n in numbers]
    if top_k < 2:
        raise ExportError(f"--top-k must be at least 2 (an ensemble of one is 'micronet-search export'), got {top_k}")
    front = _front(study)
    if top_k > len(front):
        raise ExportError(f"--top-k {top_k}: the Pareto front of study {study.study_name!r} has only {len(front)} "
                          f"member{'s' if len(front) != 1 else ''} (trials "
                          f"{', '.join(str(t.number) for t in front)})")
    objectives = Objectives.of_study(study)
    ranked = sorted(front, key=lambda t: (-objectives.accuracy(t), objectives.first_cost(t), t.number))
    return [_require_checkpoint(t) for t in ranked[:top_k]]


def trial_with_checkpoint(study: optuna.Study, number: int) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        known = f"trials 0..{max(t.number for t in trials)}" if trials else "no trials"
        raise ExportError(f"study {study.study_name!r} has no trial {number} ({known})")
    return _require_checkpoint(match[0])


def _require_checkpoint(t: FrozenTrial) -> FrozenTrial:
    if t.state != TrialState.COMPLETE:
        reason = TrialRecord.of(t).pruned_reason
        why = f" (pruned_reason: {reason})" if reason else ""
        raise ExportError(f"trial {t.number} is {t.state.name}{why}; only completed trials have a checkpoint")
    if not TrialRecord.of(t).checkpoint_artifact_id:
        raise ExportError(f"trial {t.number} is COMPLETE but has no checkpoint (no checkpoint_artifact_id user "
                          f"attribute); it was not run by micronet-search")
    return t


def _front(study: optuna.Study, mixed_hardware: bool = False) -> list[FrozenTrial]:
    front = front_trials(study, mixed_hardware)
    if not front:
        raise ExportError(f"study {study.study_name!r} has no Pareto front yet: no feasible completed trial")
    return front


# ---------------------------------------------------------------------------------------------------------------
# Loading a trial's model


def load_trial_model(study: optuna.Study, trial: FrozenTrial, workdir: str | Path) -> tuple[nn.Module, dict]:
    """The trial's trained model (eval mode, CPU) with baked weights, and its checkpoint metadata.

    The checkpoint is downloaded from the study's artifact store (the ``artifact_dir`` study attribute) into
    ``workdir``.
    """
    _require_checkpoint(trial)
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
        optuna.artifacts.download_artifact(artifact_store=optuna.artifacts.FileSystemArtifactStore(store_dir),
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


# ---------------------------------------------------------------------------------------------------------------
# The ensemble module


class MajorityVote(nn.Module):
    """Majority vote of member classifiers, as in seed 000: each member predicts independently (top-1).

    The output is ``votes + summed_softmax / (members + 1)`` per class. Votes are whole numbers and the second term
    lies in [0, 1), so ``argmax`` of the output is the class with the most votes, ties broken by the members'
    summed softmax probabilities (and, if those tie exactly too, by the lower class index).
    """

    def __init__(self, members: Iterable[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = torch.zeros(())
        probs = torch.zeros(())
        for member in self.members:
            logits = member(x)
            votes = votes + torch.zeros_like(logits).scatter(1, logits.argmax(1, keepdim=True), 1.0)
            probs = probs + logits.softmax(1)
        return votes + probs / (len(self.members) + 1)


# ---------------------------------------------------------------------------------------------------------------
# How closely the ONNX graph must reproduce torch


def activation_quantizers(model: nn.Module) -> list[dict]:
    """The fake-quantized activations of ``model`` in module order, with the rounding step of each.

    At 2-8 bits the levels are uniform, ``step = range / (2^bits - 1)`` over the tensor's trained range; at 16 bits
    the value is rounded to float16, whose step is one float16 ulp, ``2^(floor(log2 x) - 10)``: 2^-10 of the
    value's power of two (``relative_step``). At 32 bits there is no rounding, and no entry. A range of 0 (a model
    never trained) means that each batch uses its own max, so the step is not fixed (``None``).
    """
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantAct) or m.bits >= 32:
            continue
        if m.bits == 16:
            rows.append({"module": name, "bits": 16, "rounding": "float16", "relative_step": 2.0 ** -10})
        else:
            r = float(m.running_max)
            rows.append({"module": name, "bits": m.bits, "rounding": "uniform", "range": r if r > 0 else None,
                         "step": r / (2 ** m.bits - 1) if r > 0 else None})
    return rows


def _rounding_ops(quantizers: Iterable[dict], model: nn.Module | None = None) -> dict[str, int]:
    """The ONNX ops that the quantizers export to: one ``Round`` each at 2-8 bits, one float16 ``Cast`` at 16, per
    pass through them (two under test-time flip averaging)."""
    flips = [] if model is None else [n for n, m in model.named_modules() if isinstance(m, FlipAverage)]

    def passes(q: dict) -> int:
        return 2 if any(f == "" or q["module"].startswith(f + ".") for f in flips) else 1

    quantizers = list(quantizers)
    return {"Round": sum(passes(q) for q in quantizers if q["rounding"] == "uniform"),
            "Cast to float16": sum(passes(q) for q in quantizers if q["rounding"] == "float16")}


def onnx_check(model: nn.Module, x: torch.Tensor, mean, std) -> dict:
    """How closely an ONNX export of ``model`` must reproduce its outputs on the uint8 images ``x``.

    Two correct runtimes compute each convolution and addition with rounding errors of a few float32 ulps of the
    magnitude of its terms, in different ways (summation order, FMA, vector width, batch-norm folded into the
    convolution or not). Without activation quantizers the graph is continuous and the outputs differ by about
    1e-5: rule ``strict``, every image within LOGIT_TOLERANCE.

    A quantized activation is a step function: a value that lies that close to a rounding boundary lands on the
    neighbouring level in one runtime and not in the other. It moves by one step (see
    :func:`activation_quantizers`), and the step propagates through the rest of the model, where it flips further
    values. How far the outputs move thus depends on the steps and on the model, so it is measured, not fixed:
    the model is run twice more with ``JITTER * (|v| + mean |v|)`` added to each quantizer input ``v`` (the mean
    over the image's tensor: a sum's rounding error scales with its terms, which a small result understates), with
    a random sign per value in the first run and the opposite signs in the second. Every value within that
    distance of a boundary is thereby rounded the other way in one of the two runs, in random directions, as a
    runtime difference does. Rule ``rounding-tolerant``: every image within LOGIT_TOLERANCE + FLIP_MARGIN × the
    largest movement of an image in those runs, and the median image within LOGIT_TOLERANCE + FLIP_MARGIN × the
    median movement. Flips move a few images far and the typical one little; an export bug, such as a wrong weight,
    moves every image. A missing quantizer at 16 bits moves the outputs no more than flips do, so the ONNX graph
    must also hold one rounding op per quantizer.

    Measured on four small quickstart models (qa 4, 8, 16, 16): the values that torch and onnxruntime rounded
    differently lay a median of 0.3-1 and at most 6 times 2^-23 (|v| + mean |v|) from the boundary. Four times
    JITTER changed the largest movement by 0.85-1.5×, since it comes from the few values with the most effect, so
    FLIP_MARGIN covers runtimes that differ by more than JITTER.

    An ensemble outputs votes, which change by whole numbers when a member's top two classes are close: rule
    ``votes``, the median image within the tolerance above and the same class predicted for at least
    TOP1_AGREEMENT of the images.
    """
    quantizers = [m for m in model.modules() if isinstance(m, QuantAct) and m.bits < 32]
    check = {"rule": "votes" if isinstance(model, MajorityVote) else "rounding-tolerant" if quantizers else "strict",
             "rounding_ops": _rounding_ops(activation_quantizers(model), model)}
    moved = torch.zeros(len(x))
    if quantizers and len(x):
        reference = predict(model, x, mean, std)
        for sign in (1.0, -1.0):
            generator = torch.Generator().manual_seed(0)  # the same signs in both runs, negated in the second

            def jitter(module, args, sign=sign, generator=generator):
                v = args[0].double()
                signs = torch.randint(0, 2, v.shape, generator=generator, dtype=torch.float64).to(v.device) * 2 - 1
                scale = v.abs() + v.abs().mean(dim=tuple(range(1, v.dim())), keepdim=True)
                return ((v + sign * JITTER * signs * scale).to(args[0].dtype),)

            hooks = [m.register_forward_pre_hook(jitter) for m in quantizers]
            try:
                moved = torch.maximum(moved, (predict(model, x, mean, std) - reference).abs().amax(1))
            finally:
                for hook in hooks:
                    hook.remove()
    largest, median = (moved.max().item(), moved.median().item()) if len(x) else (0.0, 0.0)
    check.update({
        "max_tolerance": None if check["rule"] == "votes" else LOGIT_TOLERANCE + FLIP_MARGIN * largest,
        "median_tolerance": LOGIT_TOLERANCE + FLIP_MARGIN * median,
        "top1_agreement": TOP1_AGREEMENT if check["rule"] == "votes" else None,
        "simulated_max": largest, "simulated_median": median, "jitter": JITTER, "margin": FLIP_MARGIN,
    })
    return check


# ---------------------------------------------------------------------------------------------------------------
# Exports


@dataclass
class VerifyReport:
    """What :func:`verify` measured: test accuracy per reloaded format and the ONNX / torch difference."""

    test_images: int
    card_accuracy: float
    accuracy: dict[str, float] = field(default_factory=dict)
    onnx_reference: str | None = None   # the torch model the ONNX output was compared with
    onnx_rule: str | None = None        # "strict", "rounding-tolerant" or "votes", see onnx_check
    onnx_max_abs_diff: float | None = None
    onnx_median_abs_diff: float | None = None  # median over the images of the max |difference| of each
    onnx_tolerance: float | None = None         # the bound on onnx_max_abs_diff (None for votes)
    onnx_median_tolerance: float | None = None  # the bound on onnx_median_abs_diff
    onnx_images_over_tolerance: int | None = None
    onnx_top1_agreement: float | None = None
    onnx_rounding_ops: dict[str, int] | None = None  # found in the ONNX graph, per kind


@dataclass
class ExportResult:
    out: Path
    card: dict
    verify: VerifyReport | None = None


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"torchscript,onnx"`` or a list → a tuple in canonical order; unknown names raise ExportError."""
    if formats is None:
        return FORMATS
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
    if not names:
        raise ExportError(f"give at least one format: {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def export_model(study: optuna.Study, trial: FrozenTrial, out: str | Path, formats=FORMATS, force: bool = False,
                 verify_export: bool = False, data_path: str | None = None) -> ExportResult:
    """Export one trial's model into the folder ``out``.

    Everything is checked (the folder, the trial, the checkpoint, the dataset) before anything is written, and the
    folder appears only once complete. With ``verify_export`` the written files are reloaded and checked before
    the folder is put in place; a mismatch raises :class:`VerificationError` and leaves ``out`` untouched.
    """
    formats = parse_formats(formats)
    _check_onnx_packages(formats, verify_export)
    out = check_out_dir(out, force)
    _require_checkpoint(trial)
    with tempfile.TemporaryDirectory(prefix="micronet-export-") as work:
        model, meta = load_trial_model(study, trial, work)
    data_config = _data_config(meta["data"], data_path)
    data = load_test_data(data_config)
    mean, std = meta["mean"], meta["std"]
    test_accuracy = evaluate(model, data.x_test, data.y_test, mean, std)
    card = {
        "kind": "model", "study": study.study_name, "trial": trial.number,
        "on_front": trial.number in {t.number for t in front_trials(study)},
        "candidate": meta["candidate"], "num_classes": meta["num_classes"],
        **_costs_card(study, trial, model),
        "val_accuracy": Objectives.of_study(study).accuracy(trial), "test_accuracy": test_accuracy,
        **_common_card(data_config, data, meta, formats, output="logits"),
    }
    if "onnx" in formats:
        card["onnx_check"] = onnx_check(model, data.x_test, mean, std)

    def write(folder: Path) -> VerifyReport | None:
        files = {}
        if "state_dict" in formats:
            torch.save(model.state_dict(), folder / STATE_DICT_FILE)
            files["state_dict"] = STATE_DICT_FILE
        files.update(_write_graphs(model, folder, formats, normalize(data.x_test[:2], mean, std), "logits"))
        _finish_card(card, files)
        _write_card(folder, card)
        return verify(folder, data=data, reference=model) if verify_export else None

    return ExportResult(out, card, _publish(out, force, write))


def export_ensemble(study: optuna.Study, members: Sequence[FrozenTrial], out: str | Path, formats=FORMATS,
                    force: bool = False, verify_export: bool = False, data_path: str | None = None) -> ExportResult:
    """Export the majority vote of ``members`` (see :class:`MajorityVote`) into the folder ``out``.

    Writes the ensemble as one TorchScript and one ONNX graph, and each member's state dict under ``state_dicts/``.
    The card lists the members and gives the ensemble's score by seed 000's convention: the sum of the members'
    scores. Same checks and atomicity as :func:`export_model`.
    """
    formats = parse_formats(formats)
    _check_onnx_packages(formats, verify_export)
    out = check_out_dir(out, force)
    if len(members) < 2:
        raise ExportError(f"an ensemble needs at least 2 members, got {len(members)}")
    for t in members:
        _require_checkpoint(t)
    with tempfile.TemporaryDirectory(prefix="micronet-export-") as work:
        loaded = [load_trial_model(study, t, work) for t in members]
    meta = loaded[0][1]
    for t, (_, other) in zip(members[1:], loaded[1:], strict=True):
        for key in ("num_classes", "data", "mean", "std"):
            if other[key] != meta[key]:
                raise ExportError(f"trials {members[0].number} and {t.number} were trained on different data "
                                  f"({key} differs); ensemble members must share the dataset")
    data_config = _data_config(meta["data"], data_path)
    data = load_test_data(data_config)
    mean, std = meta["mean"], meta["std"]
    ensemble = MajorityVote([m for m, _ in loaded]).eval()
    front = {t.number for t in front_trials(study)}
    rows = []
    for t, (model, m_meta) in zip(members, loaded, strict=True):
        rows.append({
            "trial": t.number, "on_front": t.number in front, "candidate": m_meta["candidate"],
            **_costs_card(study, t, model), "val_accuracy": Objectives.of_study(study).accuracy(t),
            "test_accuracy": evaluate(model, data.x_test, data.y_test, mean, std),
        })
    card = {
        "kind": "ensemble", "study": study.study_name, "trials": [t.number for t in members],
        "num_classes": meta["num_classes"], "vote": VOTE_RULE,
        "score": sum(r["score"] for r in rows), "score_convention": SCORE_CONVENTION,
        "measured_score": _sum_or_none(r["measured_score"] for r in rows),
        "complexity": {k: _sum_or_none(r["complexity"][k] for r in rows) for k in rows[0]["complexity"]},
        "val_accuracy": evaluate(ensemble, data.x_val, data.y_val, mean, std),
        "val_accuracy_note": "the vote's accuracy on the validation split, measured at export",
        "test_accuracy": evaluate(ensemble, data.x_test, data.y_test, mean, std),
        "members": rows,
        **_common_card(data_config, data, meta, formats, output="scores"),
    }
    if "onnx" in formats:
        card["onnx_check"] = onnx_check(ensemble, data.x_test, mean, std)

    def write(folder: Path) -> VerifyReport | None:
        files = {}
        if "state_dict" in formats:
            (folder / MEMBERS_DIR).mkdir()
            for row, (model, _) in zip(rows, loaded, strict=True):
                name = f"{MEMBERS_DIR}/trial-{row['trial']}.pt"
                torch.save(model.state_dict(), folder / name)
                row["state_dict"] = name
            files["state_dict"] = MEMBERS_DIR
        files.update(_write_graphs(ensemble, folder, formats, normalize(data.x_test[:2], mean, std), "scores"))
        _finish_card(card, files)
        _write_card(folder, card)
        return verify(folder, data=data, reference=ensemble) if verify_export else None

    return ExportResult(out, card, _publish(out, force, write))


def _sum_or_none(values: Iterable):
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _data_config(values: dict, data_path: str | None) -> dict:
    values = dict(values)
    if data_path is not None:
        values["path"] = str(data_path)
    return values


def load_test_data(data_config: dict) -> Splits:
    """The dataset of a checkpoint or card (its ``data`` mapping), loaded on the CPU."""
    return load_data(from_mapping(DataConfig, dict(data_config), "checkpoint data"))


def _reference(study: optuna.Study) -> ScoreReference:
    values = (study.user_attrs.get("micronet_config") or {}).get("reference")
    return from_mapping(ScoreReference, values, "study reference") if values else ScoreReference()


def _costs_card(study: optuna.Study, trial: FrozenTrial, model: nn.Module) -> dict:
    """Bit widths, counts and both scores with their terms, from the trial's records."""
    a = TrialRecord.of(trial)
    compression = Compression(**(a.candidate or {}).get("compression", {}))
    qw, qa = quantization_of(model)
    reference = _reference(study)
    counts = {k: getattr(a, k) for k in ("dense_params", "dense_macs", "compressed_params", "compressed_macs",
                                         "nonzero_params")}
    counts["exported_nonzero_params"] = count_nonzero_params(model)  # quantization can round more weights to 0
    card = {"bits": {"qw": qw, "qa": qa}, "activation_quantizers": activation_quantizers(model),
            "pruning": {"ps": compression.ps, "pu": compression.pu},
            # the graph averages each image's logits with its mirror's: twice the MACs, counted in the score
            "test_time_flip": isinstance(model, FlipAverage),
            "complexity": counts, "score": a.course_score, "score_terms": None,
            "measured_score": a.measured_score, "measured_score_terms": None,
            "score_reference": {"params": reference.params, "macs": reference.macs},
            "objectives": Objectives.of_study(study).values(trial)}  # the study's objectives, by name
    if a.latency_target is not None:
        card["latency"] = {"ms": card["objectives"].get("latency"), "target": a.latency_target,
                           "hardware": a.latency_hardware}
    if counts["dense_params"] is not None and counts["dense_macs"] is not None:
        s = compute_score(counts["dense_params"], counts["dense_macs"], compression, reference)
        card["score_terms"] = {"param_term": s.param_term, "macs_term": s.macs_term}
    if counts["nonzero_params"] is not None and counts["compressed_macs"] is not None:
        s = compute_score(counts["nonzero_params"], counts["compressed_macs"],
                          Compression(qw=compression.qw, qa=compression.qa), reference)
        card["measured_score_terms"] = {"param_term": s.param_term, "macs_term": s.macs_term}
    return card


def _common_card(data_config: dict, data: Splits, meta: dict, formats: Sequence[str], output: str) -> dict:
    versions = {"micronet-search": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
                "python": platform.python_version()}
    if "onnx" in formats:
        import onnx

        versions["onnx"] = onnx.__version__
    return {
        "test_images": len(data.y_test),
        "dataset": {"name": data_config.get("name"), "num_classes": data.num_classes, "config": data_config,
                    "test_split": "the dataset's test split (never seen by the search)"},
        "preprocessing": {"input_shape": list(data.x_test.shape[1:]), "input_dtype": "float32", "layout": "NCHW",
                          "pixels": "uint8 RGB", "scale": "1/255", "mean": list(meta["mean"]),
                          "std": list(meta["std"]), "steps": PREPROCESSING},
        "input_name": "input", "output_name": output,
        "output": ("N×classes logits; argmax is the predicted class" if output == "logits" else
                   "N×classes vote scores; argmax is the majority vote"),
        "versions": versions,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _finish_card(card: dict, files: dict) -> None:
    card["files"] = files
    card["how_to_load"] = how_to_load(card)


def how_to_load(card: dict) -> dict:
    """A Python snippet per written format (also in the README)."""
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    prep = (f"x = torch.as_tensor(images_uint8_nhwc).permute(0, 3, 1, 2).float() / 255; "
            f"x = (x - torch.tensor({_fmt(mean)}).view(1, 3, 1, 1)) / torch.tensor({_fmt(std)}).view(1, 3, 1, 1)")
    out = card["output_name"]
    snippets = {"preprocessing": prep}
    files = card.get("files", {})
    if "torchscript" in files:
        snippets["torchscript"] = f"model = torch.jit.load('{files['torchscript']}'); {out} = model(x)"
    if "onnx" in files:
        snippets["onnx"] = (f"session = onnxruntime.InferenceSession('{files['onnx']}'); "
                            f"{out} = session.run(None, {{'input': x.numpy()}})[0]")
    if "state_dict" in files:
        snippets["state_dict"] = (f"from search.export import load_state_dict_model; "
                                  f"model = load_state_dict_model('.'); {out} = model(x)  (run in this folder)")
    return snippets


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _check_onnx_packages(formats: Sequence[str], verify_export: bool) -> None:
    needed = (["onnx"] if "onnx" in formats else []) + (["onnxruntime"] if "onnx" in formats and verify_export else [])
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            raise ExportError(f"the onnx format needs the {name} package: python3 -m pip install {name} (or leave "
                              f"onnx out of --format)") from None


def _write_graphs(model: nn.Module, folder: Path, formats: Sequence[str], example: torch.Tensor,
                  output: str) -> dict:
    files = {}
    model.eval()
    with warnings.catch_warnings():
        # torch.jit.trace and the TorchScript-based ONNX exporter still work in torch 2.14 but warn that they
        # are deprecated; the user can do nothing about it here.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if "torchscript" in formats:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)  # verify() checks it
            traced.save(str(folder / TORCHSCRIPT_FILE))
            files["torchscript"] = TORCHSCRIPT_FILE
        if "onnx" in formats:
            torch.onnx.export(model, (example,), str(folder / ONNX_FILE), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=[output],
                              dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}})
            files["onnx"] = ONNX_FILE
    return files


def _write_card(folder: Path, card: dict) -> None:
    (folder / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / README).write_text(readme(card), encoding="utf-8")


def check_out_dir(out: str | Path, force: bool) -> Path:
    """The absolute output folder, if it can be written: new, empty, or (with ``force``) an earlier export.

    ``force`` replaces only a folder that holds a ``model_card.json``, so a mistyped ``--out`` cannot wipe out
    an unrelated folder.
    """
    out = Path(out).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"--out {out} exists and is not a folder")
        entries = list(out.iterdir())
        if entries:
            if not force:
                raise ExportError(f"--out {out} exists and is not empty ({len(entries)} entries); pass --force to "
                                  f"replace an earlier export")
            if not (out / CARD).is_file():
                raise ExportError(f"--out {out} is not empty and holds no {CARD}, so it is not an earlier export; "
                                  f"--force replaces only exports: choose a new or empty folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot create --out {out}: {ancestor} is not a folder")
    # Try it rather than ask os.access: that says yes to root whatever the permission bits, and cannot know that a
    # file system such as /proc refuses new entries to everyone.
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=f".{out.name}.probe-"))
    except OSError:
        raise ExportError(f"cannot create --out {out}: {ancestor} is not writable") from None
    return out


def _publish(out: Path, force: bool, write: Callable[[Path], VerifyReport | None]) -> VerifyReport | None:
    """Run ``write`` on a temporary sibling folder of ``out``, then rename it to ``out``; clean up on failure."""
    created = []  # parent folders made here, removed again on failure
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = None
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        except OSError as e:
            raise ExportError(f"cannot write --out {out}: {e.strerror or e}") from None
        try:
            report = write(tmp)
        except VerificationError as e:
            raise VerificationError(f"{e}; nothing was written to {out}") from None
        except OSError as e:
            raise ExportError(f"cannot write --out {out}: {e.strerror or e}") from None
        tmp.chmod(0o755)  # mkdtemp makes it private
        check_out_dir(out, force)  # again: something may have appeared there meanwhile
        _swap(tmp, out)
        tmp = None
        return report
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) / "export"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Reloading and verifying


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


def onnx_predict(path: str | Path, x: torch.Tensor, mean, std, batch_size: int = 512) -> torch.Tensor:
    """Outputs of an exported ONNX model for uint8 images N×3×H×W, through onnxruntime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: normalize(x[i:i + batch_size], mean, std).numpy()})[0]
           for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0)


def verify(folder: str | Path, data: Splits | None = None, reference: nn.Module | None = None,
           data_path: str | None = None) -> VerifyReport:
    """Reload every artifact in ``folder`` and re-evaluate it on the test split against the card.

    Each format's test accuracy must be within 0.5 % (absolute) of the card's, and the ONNX output must match the
    torch output by the card's ``onnx_check`` (see :func:`onnx_check`): the output of ``reference`` when given
    (the in-memory model at export), else of the state dict model, else of the TorchScript one. A card written
    before ``onnx_check`` existed gets it derived here from the reloaded model. A mismatch raises
    :class:`VerificationError` naming all of them.
    """
    folder = Path(folder)
    card = read_card(folder)
    files = card.get("files", {})
    if data is None:
        data = load_test_data(_data_config(card["dataset"]["config"], data_path))
    x, y = data.x_test, data.y_test
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    expected = card["test_accuracy"]
    report = VerifyReport(len(y), expected)
    if len(y) != card["test_images"]:
        raise VerificationError(f"the test split has {len(y)} images, the card says {card['test_images']}: "
                                f"not the dataset the model was exported with")
    outputs: dict[str, torch.Tensor] = {}
    scripted = None
    if "state_dict" in files:
        outputs["state_dict"] = predict(load_state_dict_model(folder), x, mean, std)
    if "torchscript" in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
            scripted = torch.jit.load(str(folder / files["torchscript"]), map_location="cpu")
        outputs["torchscript"] = predict(scripted, x, mean, std)
    if "onnx" in files:
        outputs["onnx"] = onnx_predict(folder / files["onnx"], x, mean, std)
    problems = []
    for name, logits in outputs.items():
        accuracy = (logits.argmax(1) == y).float().mean().item()
        report.accuracy[name] = accuracy
        if abs(accuracy - expected) > ACCURACY_TOLERANCE:
            problems.append(f"{name} test accuracy {accuracy:.4f} is not within {ACCURACY_TOLERANCE:.1%} of the "
                            f"card's {expected:.4f}")
    if "onnx" in outputs:
        if reference is not None:
            report.onnx_reference, torch_out = "torch", predict(reference, x, mean, std)
        else:
            report.onnx_reference = next((k for k in ("state_dict", "torchscript") if k in outputs), None)
            torch_out = outputs.get(report.onnx_reference)
        if torch_out is not None and len(y):
            check = card.get("onnx_check") or onnx_check(reference or _reloaded_model(folder, card, scripted), x,
                                                         mean, std)
            problems += _compare_onnx(report, card, check, folder / files["onnx"], outputs["onnx"], torch_out)
    if problems:
        raise VerificationError("verification failed: " + "; ".join(problems))
    return report


def _reloaded_model(folder: Path, card: dict, scripted: torch.jit.ScriptModule | None) -> nn.Module:
    """The exported model as a module with its quantizers, from the state dict or else from the TorchScript file.

    Tracing keeps the module tree, so the TorchScript module's state dict loads into the rebuilt model.
    """
    if "state_dict" in card["files"]:
        return load_state_dict_model(folder)
    ensemble = card["kind"] == "ensemble"
    candidates = [m["candidate"] for m in card["members"]] if ensemble else [card["candidate"]]
    models = [bake_weights(rebuild(Candidate.from_dict(c), card["num_classes"])) for c in candidates]
    model = MajorityVote(models) if ensemble else models[0]
    model.load_state_dict(scripted.state_dict())
    return model.eval()


def _onnx_rounding_ops(path: Path) -> dict[str, int]:
    import onnx

    found = dict.fromkeys(_rounding_ops([]), 0)
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Round":
            found["Round"] += 1
        elif node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute):
            found["Cast to float16"] += 1
    return found


def _compare_onnx(report: VerifyReport, card: dict, check: dict, onnx_path: Path, onnx_out: torch.Tensor,
                  torch_out: torch.Tensor) -> list[str]:
    """Check the ONNX graph and outputs against torch's by the rule of ``check`` (see :func:`onnx_check`);
    fills ``report`` and returns the problems found."""
    per_image = (onnx_out - torch_out).abs().amax(1)
    report.onnx_rule = check["rule"]
    report.onnx_max_abs_diff = per_image.max().item()
    report.onnx_median_abs_diff = per_image.median().item()
    report.onnx_tolerance = check["max_tolerance"]
    report.onnx_median_tolerance = check["median_tolerance"]
    bound = report.onnx_tolerance if report.onnx_tolerance is not None else report.onnx_median_tolerance
    report.onnx_images_over_tolerance = int((per_image > bound).sum())
    report.onnx_top1_agreement = (onnx_out.argmax(1) == torch_out.argmax(1)).float().mean().item()
    report.onnx_rounding_ops = _onnx_rounding_ops(onnx_path)
    output, ref = card["output_name"], report.onnx_reference
    problems = []
    expected = check["rounding_ops"]
    if report.onnx_rounding_ops != expected:
        found = ", ".join(f"{n} {op}" for op, n in report.onnx_rounding_ops.items())
        want = ", ".join(f"{n} {op}" for op, n in expected.items())
        problems.append(f"the ONNX graph holds {found} where the model's activation quantizers need {want}")
    if report.onnx_tolerance is not None and not report.onnx_max_abs_diff <= report.onnx_tolerance:
        why = "float32 arithmetic" if check["rule"] == "strict" else "rounding-boundary flips"
        problems.append(f"ONNX {output} differ from {ref}'s by up to {report.onnx_max_abs_diff:.3g} "
                        f"(> {report.onnx_tolerance:.3g}, more than {why} explain) on "
                        f"{report.onnx_images_over_tolerance} of {len(per_image)} images")
    if check["rule"] != "strict" and not report.onnx_median_abs_diff <= report.onnx_median_tolerance:
        problems.append(f"ONNX {output} differ from {ref}'s by {report.onnx_median_abs_diff:.3g} on the median image "
                        f"(> {report.onnx_median_tolerance:.3g})")
    if check["top1_agreement"] is not None and report.onnx_top1_agreement < check["top1_agreement"]:
        problems.append(f"ONNX and {ref} predict the same class for only {report.onnx_top1_agreement:.2%} of the "
                        f"images (< {check['top1_agreement']:.0%})")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The README of an export


def readme(card: dict) -> str:
    files = card.get("files", {})
    p = card["preprocessing"]
    out = card["output_name"]
    if card["kind"] == "ensemble":
        title = f"# Majority-vote ensemble of trials {', '.join(map(str, card['trials']))} of study {card['study']}"
        about = [f"{VOTE_RULE[0].upper()}{VOTE_RULE[1:]}.", "",
                 f"Score: {card['score']:.6g} ({SCORE_CONVENTION}). Validation accuracy of the vote "
                 f"{card['val_accuracy']:.4f}, test accuracy {card['test_accuracy']:.4f} "
                 f"({card['test_images']} test images).", "",
                 "| trial | arch | qw | qa | score | val acc | test acc |", "|---:|---|---:|---:|---:|---:|---:|"]
        about += [f"| {m['trial']} | {m['candidate']['arch']} | {m['bits']['qw']} | {m['bits']['qa']} | "
                  f"{m['score']:.6g} | {m['val_accuracy']:.4f} | {m['test_accuracy']:.4f} |" for m in card["members"]]
    else:
        c = card["candidate"]
        title = f"# Trial {card['trial']} of study {card['study']}"
        about = [f"{c['arch']} (width {c['width']}, groups {c['groups']}, depthwise {c['depthwise']}), pruned "
                 f"ps={card['pruning']['ps']:.3g} pu={card['pruning']['pu']:.3g}, weights {card['bits']['qw']} bits "
                 f"(baked in), activations {card['bits']['qa']} bits (fake-quantized in the graph)."
                 + (" Test-time flip averaging: the graph returns the mean of the logits of each image and its "
                    "horizontal mirror, two passes per image (the score counts both)." if card.get("test_time_flip")
                    else ""), "",
                 f"Score {card['score']:.6g} (measured {_g(card['measured_score'])}); validation accuracy "
                 f"{card['val_accuracy']:.4f} (from the study), test accuracy {card['test_accuracy']:.4f} "
                 f"({card['test_images']} test images, measured at export)."]
    h, w = p["input_shape"][1:]
    lines = [title, "", *about, "", "## Input", "",
             f"A float32 tensor N×3×{h}×{w} (NCHW), from uint8 RGB images: divide by 255, then subtract the mean "
             "and divide by the std per channel (0..1 scale):", "",
             f"- mean: {_fmt(p['mean'])}", f"- std: {_fmt(p['std'])}", "",
             "```python", "import torch", "", f"# images_uint8_nhwc: N×{h}×{w}×3 uint8 RGB",
             "x = torch.as_tensor(images_uint8_nhwc).permute(0, 3, 1, 2).float() / 255",
             f"x = (x - torch.tensor({_fmt(p['mean'])}).view(1, 3, 1, 1)) / torch.tensor({_fmt(p['std'])})"
             f".view(1, 3, 1, 1)", "```", "",
             f"Output `{out}`: {card['output']}.", "", "## Loading", ""]
    if "torchscript" in files:
        lines += ["TorchScript (needs only torch):", "", "```python",
                  f"model = torch.jit.load('{files['torchscript']}')", f"{out} = model(x)", "```", ""]
    if "onnx" in files:
        lines += ["ONNX (onnxruntime; input name `input`, batch size free):", "", "```python", "import onnxruntime",
                  "", f"session = onnxruntime.InferenceSession('{files['onnx']}')",
                  f"{out} = session.run(None, {{'input': x.numpy()}})[0]", "```", ""]
        check = card.get("onnx_check") or {}
        if check.get("max_tolerance") is not None:
            lines += [f"Its outputs match torch's within {check['max_tolerance']:.2g} on every test image "
                      f"(rule {check['rule']}: see `onnx_check` in `{CARD}`).", ""]
    if "state_dict" in files:
        lines += ["State dict (needs micronet-search: the model is rebuilt from the candidate config in "
                  f"`{CARD}`, pruned to the same shapes, quantized, baked, then loaded):", "", "```python",
                  "from search.export import load_state_dict_model", "",
                  "model = load_state_dict_model('.')  # this folder", f"{out} = model(x)", "```", ""]
    lines += ["Check everything again on the test split:", "", "```python", "from search.export import verify", "",
              "print(verify('.'))", "```", "", f"Full details: `{CARD}`.", ""]
    return "\n".join(lines)


def _g(value) -> str:
    return "-" if value is None else f"{value:.6g}"


__all__ = [
    "FORMATS", "ExportError", "ExportResult", "MajorityVote", "VerificationError", "VerifyReport",
    "activation_quantizers", "check_out_dir", "export_ensemble", "export_model", "knee_trial", "load_state_dict_model",
    "load_test_data", "load_trial_model", "onnx_check", "onnx_predict", "parse_formats", "read_card", "select_members",
    "select_trial", "verify",
]
