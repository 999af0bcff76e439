"""Verification: reload every written artifact, re-evaluate it on the test split against the card, and compare the
ONNX outputs with torch's within the tolerance of :mod:`search.export.onnx_tolerance`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from search.candidate.candidate import Candidate
from search.compress import bake_weights
from search.export.errors import VerificationError
from search.export.load import load_state_dict_model, load_test_data, read_card, with_data_path
from search.export.onnx_tolerance import count_onnx_rounding_ops, onnx_check, onnx_predict
from search.export.vote import MajorityVote
from search.training.checkpoint import rebuild
from search.training.data import Splits
from search.training.trainer import predict

ACCURACY_TOLERANCE = 0.005       # verify: |accuracy of a reloaded artifact - card| (absolute)


@dataclass
class Verification:
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


def verify(folder: str | Path, data: Splits | None = None, reference: nn.Module | None = None,
           data_path: str | None = None) -> Verification:
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
        data = load_test_data(with_data_path(card["dataset"]["config"], data_path))
    x, y = data.x_test, data.y_test
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    expected = card["test_accuracy"]
    verification = Verification(len(y), expected)
    if len(y) != card["test_images"]:
        raise VerificationError(f"the test split has {len(y)} images, the card says {card['test_images']}: "
                                f"not the dataset the model was exported with")
    outputs: dict[str, torch.Tensor] = {}
    scripted = None
    problems = []

    def load_torchscript():
        nonlocal scripted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
            scripted = torch.jit.load(str(folder / files["torchscript"]), map_location="cpu")
        return predict(scripted, x, mean, std)

    readers = {"state_dict": lambda: predict(load_state_dict_model(folder), x, mean, std),
               "torchscript": load_torchscript, "onnx": lambda: onnx_predict(folder / files["onnx"], x, mean, std)}
    for name, read in readers.items():
        if name not in files:
            continue
        try:
            outputs[name] = read()
        except Exception as e:  # a damaged or foreign file: a failed check, named, not a crash
            problems.append(f"{name} file {files[name]} cannot be loaded ({type(e).__name__})")
    for name, logits in outputs.items():
        accuracy = (logits.argmax(1) == y).float().mean().item()
        verification.accuracy[name] = accuracy
        if abs(accuracy - expected) > ACCURACY_TOLERANCE:
            problems.append(f"{name} test accuracy {accuracy:.4f} is not within {ACCURACY_TOLERANCE:.1%} of the "
                            f"card's {expected:.4f}")
    if "onnx" in outputs:
        if reference is not None:
            verification.onnx_reference, torch_out = "torch", predict(reference, x, mean, std)
        else:
            verification.onnx_reference = next((k for k in ("state_dict", "torchscript") if k in outputs), None)
            torch_out = outputs.get(verification.onnx_reference)
        if torch_out is not None and len(y):
            check = card.get("onnx_check") or onnx_check(reference or _reloaded_model(folder, card, scripted), x,
                                                         mean, std)
            problems += _compare_onnx(verification, card, check, folder / files["onnx"], outputs["onnx"], torch_out)
    if problems:
        raise VerificationError("verification failed: " + "; ".join(problems))
    return verification


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


def _compare_onnx(checked: Verification, card: dict, check: dict, onnx_path: Path, onnx_out: torch.Tensor,
                  torch_out: torch.Tensor) -> list[str]:
    """Check the ONNX graph and outputs against torch's by the rule of ``check`` (see :func:`onnx_check`);
    fills ``checked`` and returns the problems found."""
    per_image = (onnx_out - torch_out).abs().amax(1)
    checked.onnx_rule = check["rule"]
    checked.onnx_max_abs_diff = per_image.max().item()
    checked.onnx_median_abs_diff = per_image.median().item()
    checked.onnx_tolerance = check["max_tolerance"]
    checked.onnx_median_tolerance = check["median_tolerance"]
    bound = checked.onnx_tolerance if checked.onnx_tolerance is not None else checked.onnx_median_tolerance
    checked.onnx_images_over_tolerance = int((per_image > bound).sum())
    checked.onnx_top1_agreement = (onnx_out.argmax(1) == torch_out.argmax(1)).float().mean().item()
    checked.onnx_rounding_ops = count_onnx_rounding_ops(onnx_path)
    output, ref = card["output_name"], checked.onnx_reference
    problems = []
    expected = check["rounding_ops"]
    if checked.onnx_rounding_ops != expected:
        found = ", ".join(f"{n} {op}" for op, n in checked.onnx_rounding_ops.items())
        want = ", ".join(f"{n} {op}" for op, n in expected.items())
        problems.append(f"the ONNX graph holds {found} where the model's activation quantizers need {want}")
    if checked.onnx_tolerance is not None and not checked.onnx_max_abs_diff <= checked.onnx_tolerance:
        why = "float32 arithmetic" if check["rule"] == "strict" else "rounding-boundary flips"
        problems.append(f"ONNX {output} differ from {ref}'s by up to {checked.onnx_max_abs_diff:.3g} "
                        f"(> {checked.onnx_tolerance:.3g}, more than {why} explain) on "
                        f"{checked.onnx_images_over_tolerance} of {len(per_image)} images")
    if check["rule"] != "strict" and not checked.onnx_median_abs_diff <= checked.onnx_median_tolerance:
        problems.append(f"ONNX {output} differ from {ref}'s by {checked.onnx_median_abs_diff:.3g} on the median image "
                        f"(> {checked.onnx_median_tolerance:.3g})")
    if check["top1_agreement"] is not None and checked.onnx_top1_agreement < check["top1_agreement"]:
        problems.append(f"ONNX and {ref} predict the same class for only {checked.onnx_top1_agreement:.2%} of the "
                        f"images (< {check['top1_agreement']:.0%})")
    return problems
