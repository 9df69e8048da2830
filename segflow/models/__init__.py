"""The segflow model zoo: ``build(name, num_classes, ...)`` and ``list_models()``."""

from segflow.models.registry import build, list_models, register_model

__all__ = ["build", "list_models", "register_model"]
