"""Model loading and inference. Imports nothing from the front ends."""

from .engine import Engine, EngineConfig
from .model_loading import ModelLoadError, demo_model_path

__all__ = ["Engine", "EngineConfig", "ModelLoadError", "demo_model_path"]
