"""The engine: one loaded model, the decoder chosen for it, and the workers that run it.

Front ends call `transcribe` (blocking) or `transcribe_async` (asyncio) with decoded audio and
never touch the model. CONCURRENCY + 1 worker threads run inferences in parallel, each with
NUM_THREADS torch threads.
"""

import asyncio
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..results import Transcript
from .decoding import configure_decoding, model_family, select_decoder
from .model_loading import load_asr_model, resolve_device
from .transcriber import Transcriber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None
    """Hugging Face id or .nemo path; None for the embedded demo model."""
    architecture: str | None = None
    device: str | None = None
    num_threads: int | None = None
    workers: int = 1
    """Inferences run in parallel."""
    language: str | None = None
    """Language reported when a request names none."""


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            threads = config.num_threads or max(1, (os.cpu_count() or 1) // max(1, config.workers))
            torch.set_num_threads(threads)
        self.model = load_asr_model(config.model, self.device)
        self.family = model_family(self.model)
        self.decoder = select_decoder(self.model, config.architecture)
        configure_decoding(self.model, self.decoder)
        self.transcriber = Transcriber(self.model, self.decoder)
        self.language = config.language or ("en" if config.model is None else None)
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="inference")
        log.info("model ready: %s (%s, %s decoding) on %s, %d worker(s) x %d thread(s)",
                 config.model or "demo model", type(self.model).__name__, self.decoder, self.device,
                 config.workers, torch.get_num_threads())

    @property
    def sample_rate(self) -> int:
        return self.transcriber.sample_rate

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe mono float32 audio at `sample_rate` in the calling thread."""
        result = self.transcriber.transcribe_batch([audio])[0]
        return result.with_language(language or self.language)

    def submit(self, audio: np.ndarray, language: str | None = None) -> Future:
        return self._pool.submit(self.transcribe, audio, language)

    async def transcribe_async(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return await asyncio.wrap_future(self.submit(audio, language))

    def warm_up(self) -> None:
        """One short inference, so that the first request does not pay for lazy initialisation."""
        self.transcribe(np.zeros(self.sample_rate, dtype=np.float32))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
