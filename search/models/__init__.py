"""The model registry: ``build_model("resnet20", groups=2, depthwise=True, width=0.5)``."""

from search.models import densenet, resnet  # noqa: F401  (registers the builders)
from search.models.registry import build_model, list_models, model_options, register_model

__all__ = ["build_model", "list_models", "model_options", "register_model"]
