"""The model card (``model_card.json``) and the README an export carries."""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from search import __version__
from search.candidate.complexity import count_nonzero_params
from search.candidate.score import ScoreReference, compute_score
from search.compress import quantization_of
from search.compress.compression import Compression
from search.config import from_mapping
from search.export.onnx_tolerance import activation_quantizers
from search.export.vote import VOTE_RULE
from search.models.flip import FlipAverage
from search.training.data import Splits
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord

CARD = "model_card.json"
README = "README.md"
SCORE_CONVENTION = "seed 000's convention: the sum of the members' scores"
PREPROCESSING = ("uint8 RGB image H×W×3 (the size of input_shape) → C×H×W float → /255 → (x - mean) / std per "
                 "channel; input N×3×H×W float32")


def _reference(study: optuna.Study) -> ScoreReference:
    values = (study.user_attrs.get("micronet_config") or {}).get("reference")
    return from_mapping(ScoreReference, values, "study reference") if values else ScoreReference()


def costs_card(study: optuna.Study, trial: FrozenTrial, model: nn.Module) -> dict:
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
            "complexity": counts, "score": a.score, "score_terms": None,
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


def common_card(data_config: dict, data: Splits, meta: dict, formats: Sequence[str], output: str) -> dict:
    """The card's entries a model and an ensemble share: versions, dataset, preprocessing, input and output."""
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


def finish_card(card: dict, files: dict) -> None:
    """Add the written ``files`` and how to load them."""
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


def sum_or_none(values: Iterable):
    """The sum, or None if any value is unknown."""
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def write_card(folder: Path, card: dict) -> None:
    """``model_card.json`` and ``README.md`` into ``folder``."""
    (folder / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / README).write_text(readme(card), encoding="utf-8")


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
