"""Trial checkpoints: the trained weights plus the full candidate config and the data preprocessing.

A pruned model has other shapes than its builder makes; the shapes depend only on the architecture and ``ps``, so
loading rebuilds the model, prunes it the same way, switches on the same quantization and loads the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from search import __version__
from search.candidate.candidate import Candidate
from search.compress import steps
from search.config import to_mapping
from search.errors import MicronetError
from search.training.data import DataConfig, Splits
from search.training.teacher import save_checkpoint


class CheckpointError(MicronetError):
    """A checkpoint that is missing or cannot be read."""


def save_candidate_checkpoint(path: Path, candidate: Candidate, model: nn.Module, data: Splits,
                              data_config: DataConfig, val_accuracy: float) -> None:
    save_checkpoint(Path(path), {
        "kind": "candidate", "version": __version__, "candidate": candidate.to_dict(),
        "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std),
        "data": to_mapping(data_config), "val_accuracy": val_accuracy,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })


def rebuild(candidate: Candidate, num_classes: int) -> nn.Module:
    """The compressed model's structure, untrained: build, then replay the structural compression steps."""
    return steps.rebuild(candidate.build(num_classes), candidate.compression)


def load_candidate_checkpoint(path: Path, device="cpu") -> tuple[nn.Module, dict]:
    """The trained model (eval mode) and the checkpoint's metadata; a damaged file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        candidate = Candidate.from_dict(payload["candidate"])
        model = rebuild(candidate, payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
    except MicronetError as e:
        raise CheckpointError(f"checkpoint {path} does not describe a buildable model: {e}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a micronet-search checkpoint "
                              f"({type(e).__name__})") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), meta
