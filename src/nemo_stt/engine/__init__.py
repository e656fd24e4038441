"""Model loading and inference. Imports nothing from the front ends."""

from .admission import QueueFull
from .batcher import BatchPolicy
from .engine import Engine, EngineConfig
from .model_loading import ModelLoadError, demo_model_path
from .stream import Segment, Stream, StreamingParams
from .vad import VadConfig

__all__ = ["BatchPolicy", "Engine", "EngineConfig", "ModelLoadError", "QueueFull", "Segment", "Stream",
           "StreamingParams", "VadConfig", "demo_model_path"]
