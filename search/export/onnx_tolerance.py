"""How closely the ONNX graph must reproduce torch: derived from the model's quantizers (rounding at a boundary can
flip), and the ONNX predictions of an exported file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search.compress import QuantAct
from search.export.vote import MajorityVote
from search.models.flip import FlipAverage
from search.models.graphs import ONNX_OPSET  # noqa: F401  (re-exported)
from search.training.data import normalize
from search.training.trainer import predict

LOGIT_TOLERANCE = 1e-3           # verify: |ONNX output - torch output| of a graph without rounding (see onnx_check)
JITTER = 2.0 ** -22              # onnx_check: perturbation of each quantizer input, in units of |x| + mean |x|
FLIP_MARGIN = 2.0                # onnx_check: allowed / simulated movement of the outputs by boundary flips


TOP1_AGREEMENT = 0.99            # verify, ensembles: ONNX and torch predict the same class this often


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


def count_onnx_rounding_ops(path: Path) -> dict[str, int]:
    """The rounding operations in the ONNX graph at ``path``, per kind (as :func:`onnx_check` records them)."""
    import onnx

    found = dict.fromkeys(_rounding_ops([]), 0)
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Round":
            found["Round"] += 1
        elif node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute):
            found["Cast to float16"] += 1
    return found
