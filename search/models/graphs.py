"""A model's graph files: TorchScript (traced) and ONNX (torch's TorchScript-based exporter, opset 17)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 17
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"


def write_graphs(model: nn.Module, folder: Path, formats: Sequence[str], example: torch.Tensor,
                 output: str) -> dict:
    """Write ``model``'s TorchScript and/or ONNX graph into ``folder`` (traced on ``example``, the output named
    ``output``, the batch axis dynamic); returns {format: file name}. The export and the latency objective both
    write through here, so the latency is measured on the very graph a user ships."""
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
