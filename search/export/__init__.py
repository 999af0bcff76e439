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

from search.export.build import ExportResult, export_ensemble, export_model
from search.export.card import CARD, PREPROCESSING, README, SCORE_CONVENTION, how_to_load, readme
from search.export.choose import knee_trial, select_members, select_trial, trial_with_checkpoint
from search.export.errors import ExportError, VerificationError
from search.export.files import (
    FORMATS,
    MEMBERS_DIR,
    ONNX_FILE,
    STATE_DICT_FILE,
    TORCHSCRIPT_FILE,
    check_out_dir,
    parse_formats,
)
from search.export.load import load_state_dict_model, load_test_data, load_trial_model, read_card
from search.export.onnx_tolerance import (
    FLIP_MARGIN,
    JITTER,
    LOGIT_TOLERANCE,
    ONNX_OPSET,
    TOP1_AGREEMENT,
    activation_quantizers,
    onnx_check,
    onnx_predict,
)
from search.export.verification import ACCURACY_TOLERANCE, Verification, verify
from search.export.vote import VOTE_RULE, MajorityVote

__all__ = [
    "ACCURACY_TOLERANCE",
    "CARD",
    "ExportError",
    "ExportResult",
    "FLIP_MARGIN",
    "FORMATS",
    "JITTER",
    "LOGIT_TOLERANCE",
    "MEMBERS_DIR",
    "MajorityVote",
    "ONNX_FILE",
    "ONNX_OPSET",
    "PREPROCESSING",
    "README",
    "SCORE_CONVENTION",
    "STATE_DICT_FILE",
    "TOP1_AGREEMENT",
    "TORCHSCRIPT_FILE",
    "VOTE_RULE",
    "VerificationError",
    "Verification",
    "activation_quantizers",
    "check_out_dir",
    "export_ensemble",
    "export_model",
    "how_to_load",
    "knee_trial",
    "load_state_dict_model",
    "load_test_data",
    "load_trial_model",
    "onnx_check",
    "onnx_predict",
    "parse_formats",
    "read_card",
    "readme",
    "select_members",
    "select_trial",
    "trial_with_checkpoint",
    "verify",
]
