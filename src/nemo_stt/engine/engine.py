"""The engine: one loaded model, the decoder chosen for it, a batcher that runs it, VAD and long files.

Front ends hand it audio (decoded arrays or any file FFmpeg reads) and get a `Transcript` whose
times are seconds of the audio they gave; they never touch the model.
"""

import asyncio
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..audio import AudioSource, AudioStream, decodes_quickly
from ..results import Transcript, Word
from .admission import Admission, Ticket
from .batcher import Batcher, BatchPolicy
from .buffered_stream import BufferedStream
from .cache_aware_stream import CacheAwareStream, CacheAwareStreamer, supports_cache_aware_streaming
from .decoding import configure_decoding, family_name, model_family, select_decoder
from .gpu import DevicePath, cast_matrix_weights, cpu_autocast, native_bf16_cpu
from .long_audio import iter_windows, owned_words
from .memory import release_free_memory
from .model_loading import (
    ModelLoadError,
    has_full_context,
    load_asr_model,
    resolve_device,
    use_full_attention,
    use_local_attention,
)
from .model_lock import ModelLock
from .onnx_backend import OnnxGraphs, OnnxOptions, onnxruntime_version
from .punctuation import (
    PunctuationBatcher,
    Punctuator,
    punctuated_transcript,
    punctuated_words,
    resolve_punctuation_path,
    writes_punctuation,
)
from .stream import Segment, Stream, StreamingParams
from .transcriber import Transcriber
from .vad import SpeechDetector, VadConfig

log = logging.getLogger(__name__)

Progress = Callable[[float], None]

# Input length (s) above which local attention is cheaper than full attention for full-context
# models, measured by benchmarks/attention.py.
LOCAL_ATTENTION_ABOVE = 60.0


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None
    """Hugging Face id or .nemo path; None for the embedded demo model."""
    architecture: str | None = None
    device: str | None = None
    num_threads: int | None = None
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    max_requests: int = 64
    """Requests in the engine at once (waiting or running, each with all its pieces); past it,
    non-waiting callers get QueueFull."""
    language: str | None = None
    """Language reported when a request names none."""
    vad: VadConfig | None = None
    long_file_threshold: float = 480.0
    long_file_chunk: float = 240.0
    long_file_context: float = 10.0
    local_attention: str = "auto"
    """"on", "off", or "auto": full-context models use local attention for the forwards whose longest
    input is longer than LOCAL_ATTENTION_ABOVE seconds, full attention for the others ("on": for all)."""
    punctuation_model: str | None = None
    """A recasepunc checkpoint's path, or "demo"; None: transcripts as the model writes them."""
    punctuation_force: bool = False
    """Apply the punctuation model to a model that writes punctuation and capitals itself."""
    gpu_autocast: str = "bf16"
    """On a CUDA device: "bf16" runs the encoder under bf16 autocast when the device supports it, "off"
    in fp32 (see `gpu`); no effect on the CPU."""
    cpu_autocast: str = "auto"
    """On the CPU: "bf16" runs the encoder (torch backend) under bf16 autocast when oneDNN has bf16
    kernels; "off" in fp32, as NeMo does; "auto" bf16 where it pays, a large encoder on a CPU with native
    bf16 (see `gpu.cpu_autocast`), fp32 elsewhere."""
    backend: str = "torch"
    """What runs the encoder: "torch", or "onnx" (ONNX Runtime on the CPU, see `onnx_backend`)."""
    onnx_quantize: str = "none"
    """With the onnx backend: "int8" quantises the encoder's MatMul weights."""
    onnx_cache_dir: str | None = None
    """Where exported graphs are kept (None: a temporary folder, exported at every start)."""


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        workers = config.batching.workers
        self.threads = config.num_threads or max(1, (os.cpu_count() or 1) // workers)
        on_passing_thread(self._load)
        # After loading: libraries change it when imported (silero_vad sets one thread process-wide). On a
        # GPU too: the loops' host work runs on these threads, and more of them than cores slows it. With the
        # onnx backend the threads are ONNX Runtime's: torch keeps one for features and decoding, since its
        # helpers, spinning after each parallel region, would take the cores from the encoder's.
        torch.set_num_threads(1 if self.onnx is not None else self.threads)
        # NumPy's BLAS runs the CPU transducer decoder's small products (`transducer_greedy`): one thread,
        # since more would spin against the inference loops' own.
        threadpool_limits(1, user_api="blas")
        self.language = config.language or ("en" if config.model is None else None)
        self.model_lock = ModelLock()
        self.batcher = Batcher(self._forward, self.sample_rate, config.batching, on_idle=self._release_memory)
        self.admission = Admission(config.max_requests, self.batcher.seconds_of_work)
        # Long files wait for their windows on a thread each, so that the event loop never waits.
        self._long_files = ThreadPoolExecutor(max_workers=config.max_requests, thread_name_prefix="long-file")
        self._streamer: CacheAwareStreamer | None = None
        self._streaming: StreamingParams | None = None
        # Decoding and VAD of the requests of asyncio front ends. One thread: silero runs torch, and each
        # thread that does keeps an OpenMP pool (see `on_passing_thread`); auditok holds the interpreter lock.
        self._preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        policy = config.batching
        log.info("model ready: %s (%s: %s, %s decoding) on %s, %s; %d inference loop(s) x %d thread(s), batches "
                 "of up to %d items / %g s, VAD %s, %s attention", config.model or "demo model",
                 type(self.model).__name__, family_name(self.model),
                 "rnnt (NumPy greedy)" if self.decoder == "rnnt" and self.transcriber.greedy_transducer() is not None
                 else self.decoder, self.device,
                 self.backend_name, policy.workers,
                 self.threads, policy.max_batch_items, policy.max_batch_seconds,
                 config.vad.method if config.vad else "off",
                 (f"local above {LOCAL_ATTENTION_ABOVE:g} s" if self._attention_by_length else "local")
                 if self.local_attention else "model's own")
        autocast = self.transcriber.device_path.autocast
        if self.device.type == "cuda" or autocast is not None:
            log.info("on %s: %s%s%s", self.device, self.transcriber.device_path.describe(),
                     ", linear and convolution weights in bf16" if self._matrix_weights_cast else "",
                     "; CUDA-graph greedy decoding" if self.decoder == "rnnt" and self.device.type == "cuda" else "")
        if self.device.type == "cpu" and self.config.cpu_autocast == "bf16" and autocast is None:
            log.warning("CPU_AUTOCAST=bf16: this CPU has no bf16 kernels in oneDNN; the encoder runs in fp32")
        if self.device.type == "cpu" and self.config.cpu_autocast == "auto":
            if autocast is None:
                note = ""
            elif self.onnx is None:
                note = "; CPU_AUTOCAST=off runs it in fp32 as NeMo does"
            else:
                note = "; with INFERENCE_BACKEND=onnx, for the long-file windows that run in PyTorch"
            log.info("CPU_AUTOCAST=auto: the encoder in %s (%.1f M parameters, %s bf16 arithmetic on this CPU)%s",
                     "bf16" if autocast is not None else "fp32", self._encoder_parameters / 1e6,
                     "native" if self._native_bf16 else "no native", note)

    def _load(self) -> None:
        """The model, its decoding and the VAD (torch work: see `on_passing_thread`)."""
        self.model = load_asr_model(self.config.model, self.device)
        self.family = model_family(self.model)
        self.local_attention = self._wants_local_attention()
        # With "auto", the attention is chosen per forward (see `_forward`): local attention changes
        # the outputs of inputs longer than its context, so short inputs keep the attention the model
        # was trained with.
        self._attention_by_length = self.local_attention and self.config.local_attention == "auto"
        self._local_now = self.local_attention and not self._attention_by_length
        if self._local_now:
            use_local_attention(self.model)
        self.decoder = select_decoder(self.model, self.config.architecture)
        configure_decoding(self.model, self.decoder)
        self.onnx = self._export_onnx() if self.config.backend == "onnx" else None
        self._encoder_parameters = sum(parameter.numel() for parameter in self.model.encoder.parameters())
        self._native_bf16 = native_bf16_cpu()
        self.transcriber = Transcriber(self.model, self.decoder,
                                       DevicePath.for_device(self.device, self.config.gpu_autocast,
                                                             cpu_autocast(self.config.cpu_autocast, self._native_bf16,
                                                                          self._encoder_parameters)),
                                       encoder=self.onnx.offline() if self.onnx else None)
        autocast = self.transcriber.device_path.autocast
        self._matrix_weights_cast = autocast is not None and not supports_cache_aware_streaming(self.model)
        if self._matrix_weights_cast:
            cast_matrix_weights(self.model.encoder, autocast)
            release_free_memory()  # the fp32 weights
        self.vad = SpeechDetector(self.config.vad, self.sample_rate) if self.config.vad else None
        self.punctuation = self._load_punctuation()

    def _export_onnx(self) -> OnnxGraphs | None:
        """The encoder's ONNX graphs (the offline one now, the streaming ones when streaming starts)."""
        if self.device.type != "cpu":
            raise ModelLoadError(f"INFERENCE_BACKEND=onnx runs on the CPU, not on DEVICE={self.device}: set "
                                 "DEVICE=cpu, or INFERENCE_BACKEND=torch on a GPU")
        if self._local_now:
            # NeMo's export of local attention gives a graph whose outputs differ from the model's.
            log.warning("INFERENCE_BACKEND=onnx with LONG_FILE_LOCAL_ATTENTION=on: local attention does not export "
                        "to ONNX, so the encoder runs in PyTorch (use LONG_FILE_LOCAL_ATTENTION=auto)")
            return None
        cache_dir = self.config.onnx_cache_dir
        if cache_dir is None:
            self._onnx_scratch = tempfile.TemporaryDirectory(prefix="nemo-stt-onnx-")
            cache_dir = self._onnx_scratch.name
        graphs = OnnxGraphs(self.model, OnnxOptions(Path(cache_dir), self.config.onnx_quantize, self.threads))
        try:
            graphs.offline()
        except OSError as error:
            raise ModelLoadError(f"ONNX_CACHE_DIR={cache_dir}: {error.strerror or error} (the exported graphs are "
                                 "kept there: make it writable, or set ONNX_CACHE_DIR to a writable folder)") from error
        except Exception as error:
            raise ModelLoadError(f"the encoder could not be exported to ONNX ({type(error).__name__}: "
                                 f"{str(error).strip()[:300]}); use INFERENCE_BACKEND=torch") from error
        return graphs

    @property
    def backend_name(self) -> str:
        if self.onnx is None:
            return "PyTorch"
        quantize = self.config.onnx_quantize
        return f"ONNX Runtime {onnxruntime_version()}" + (" int8" if quantize == "int8" else "")

    def _load_punctuation(self) -> PunctuationBatcher | None:
        setting = self.config.punctuation_model
        if not setting:
            return None
        if writes_punctuation(getattr(self.model.tokenizer, "vocab", ())):
            if not self.config.punctuation_force:
                log.warning("PUNCTUATION_MODEL=%s is not applied: this model writes punctuation and capitals "
                            "itself (set PUNCTUATION_FORCE=true to apply it anyway)", setting)
                return None
            log.warning("PUNCTUATION_MODEL=%s is applied to a model that writes punctuation and capitals itself "
                        "(PUNCTUATION_FORCE)", setting)
        path = resolve_punctuation_path(setting)
        punctuator = Punctuator(path, self.device)
        log.info("punctuation model: %s (backbone %s)", path, punctuator.flavor)
        return PunctuationBatcher(punctuator)

    def _wants_local_attention(self) -> bool:
        if self.config.local_attention == "off" or not has_full_context(self.model):
            return False
        if self.config.local_attention == "on":
            return True
        longest_input = max(self.config.long_file_threshold,
                            self.config.long_file_chunk + 2 * self.config.long_file_context)
        return longest_input > LOCAL_ATTENTION_ABOVE

    def _forward(self, audios: list[np.ndarray]) -> list[Transcript]:
        if not self._attention_by_length:
            with self.model_lock.shared():
                return self.transcriber.transcribe_batch(audios)
        local = max(len(audio) for audio in audios) > LOCAL_ATTENTION_ABOVE * self.sample_rate
        if self.onnx is not None and not local:
            with self.model_lock.shared():  # the ONNX graph has full attention, whatever the model has now
                return self.transcriber.transcribe_batch(audios)
        while True:
            with self.model_lock.shared():
                if self._local_now == local:
                    # With the onnx backend, forwards with local attention run the model itself: NeMo's
                    # export of local attention does not compute what the model does.
                    return self.transcriber.transcribe_batch(audios, in_torch=self.onnx is not None)
            # Switching rebuilds the attention layers: no other forward may run meanwhile.
            with self.model_lock.exclusive():
                if self._local_now != local:
                    (use_local_attention if local else use_full_attention)(self.model)
                    self._local_now = local

    def _release_memory(self) -> None:
        if self.onnx is not None:
            self.onnx.release_memory()
        release_free_memory()

    def encoder_attention(self) -> str:
        return str(self.model.encoder.self_attention_model)

    @property
    def sample_rate(self) -> int:
        return self.transcriber.sample_rate

    # Audio already decoded -------------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe mono float32 audio at `sample_rate` (VAD applied), blocking the calling thread
        (waiting for admission when the engine is full)."""
        with self.admission.enter():
            return self.punctuate(self._collect(self._submit_piece(audio, 0.0), language,
                                                len(audio) / self.sample_rate))

    def submit_raw(self, audio: np.ndarray) -> Future:
        """One forward of `audio` through the batcher, without VAD; a request of its own, so QueueFull
        when the engine is full."""
        ticket = self.admission.try_enter()
        try:
            future = self.batcher.submit(audio)
        except BaseException:
            ticket.release()
            raise
        future.add_done_callback(lambda _: ticket.release())
        return future

    # Files --------------------------------------------------------------------------------------------

    def transcribe_source(self, source: AudioSource, language: str | None = None,
                          progress: Progress | None = None) -> Transcript:
        """Decode and transcribe a file, in windows when it is longer than the long-file threshold.

        Waits for admission when the engine is full. The audio is decoded incrementally: a long file
        never sits in memory whole, and at most two windows are in flight at once. Raises
        AudioDecodeError for input that is not audio.
        """
        with self.admission.enter(), AudioStream(source, self.sample_rate) as stream:
            head, rest = self._read_head(stream)
            if rest is None:
                transcript = self._collect(self._submit_piece(head, 0.0), language, len(head) / self.sample_rate)
            else:
                transcript = self._transcribe_windows(_chain([head], rest), stream.duration, language, progress)
        transcript = self.punctuate(transcript)
        if progress:
            progress(1.0)
        return transcript

    async def transcribe_source_async(self, source: AudioSource, language: str | None = None) -> Transcript:
        """`transcribe_source` for asyncio callers: a short file holds no thread while it waits for the model.

        Raises QueueFull at once when the engine is full. Cancelling the caller drops the request's
        pieces that have not started, and a long file's windows that have not been submitted.
        """
        ticket = self.admission.try_enter()
        try:
            return await self.punctuate_async(await self._transcribe_admitted(source, language, ticket))
        finally:
            ticket.release()  # a no-op when a long file's thread holds it (see `_transcribe_admitted`)

    async def _transcribe_admitted(self, source: AudioSource, language: str | None, ticket: Ticket) -> Transcript:
        if self.vad is None and decodes_quickly(source):
            stream, head, rest, spans = self._prepare(source)  # on the event loop: cheaper than a thread hop
        else:
            stream, head, rest, spans = await asyncio.get_running_loop().run_in_executor(self._preparing,
                                                                                      self._prepare, source)
        if rest is not None:
            cancelled = threading.Event()

            def transcribe_windows() -> Transcript:
                try:
                    return self._transcribe_windows(_chain([head], rest), stream.duration, language, None, cancelled)
                finally:
                    stream.close()

            job = self._long_files.submit(transcribe_windows)
            # The place is the thread's until it ends: a cancelled caller's last window may still be running.
            place = ticket.hand_over()
            job.add_done_callback(lambda _: place.release())
            try:
                return await asyncio.wrap_future(job)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        stream.close()
        pieces = self._submit_spans(head, spans, 0.0)
        try:
            outputs = [await asyncio.wrap_future(future) for _, future in pieces]
        finally:
            for _, future in pieces:
                future.cancel()
        return self._assemble([offset for offset, _ in pieces], outputs, language, len(head) / self.sample_rate)

    def _prepare(self, source: AudioSource):
        """The work before the queue in one call (each hop between threads costs the event loop): open
        `source`, read its head and, when that is the whole file, find its speech."""
        stream = AudioStream(source, self.sample_rate)
        try:
            head, rest = self._read_head(stream)
            return stream, head, rest, self._speech_spans(head) if rest is None else []
        except BaseException:
            stream.close()
            raise

    def _read_head(self, stream: AudioStream):
        """The audio up to the long-file threshold, and the iterator of the rest (None when there is none)."""
        blocks = iter(stream)
        head, samples = [], 0
        threshold = int(self.config.long_file_threshold * self.sample_rate)
        for block in blocks:
            head.append(block)
            samples += len(block)
            if samples > threshold:
                return np.concatenate(head), blocks
        if len(head) == 1:  # a short file: its one block, without a copy
            return head[0], None
        return (np.concatenate(head) if head else np.zeros(0, dtype=np.float32)), None

    def _transcribe_windows(self, blocks, duration: float | None, language: str | None,
                            progress: Progress | None, cancelled: threading.Event | None = None) -> Transcript:
        decoded = [0]  # samples

        def counted():
            for block in blocks:
                decoded[0] += len(block)
                yield block

        windows = iter_windows(counted(), self.sample_rate, self.config.long_file_chunk,
                               self.config.long_file_context)
        in_flight: deque = deque()
        words: list[Word] = []

        def finish_oldest() -> None:
            window, pieces = in_flight.popleft()
            transcript = self._collect(pieces, None, None)
            words.extend(owned_words(window, transcript.words))
            if progress:
                done = window.core_end if window.core_end != float("inf") else (duration or window.core_end)
                progress(min(1.0, done / duration) if duration else 0.0)

        try:
            for window in windows:
                if cancelled is not None and cancelled.is_set():
                    log.info("a long file's transcription was cancelled (its client left); windows skipped")
                    raise CancelledError
                in_flight.append((window, self._submit_piece(window.audio, 0.0)))
                if len(in_flight) >= 2:
                    finish_oldest()
            while in_flight:
                finish_oldest()
        finally:
            for _, pieces in in_flight:
                for _, future in pieces:
                    future.cancel()
        if progress:
            progress(1.0)
        text = " ".join(word.word for word in words)
        return Transcript(text=text, words=tuple(words), language=language or self.language,
                          duration=decoded[0] / self.sample_rate)

    # Pieces: the parts of one audio that go to the batcher (the VAD's speech segments, or all of it) ----

    def _submit_piece(self, audio: np.ndarray, offset: float) -> list[tuple[float, Future]]:
        """Queue the speech segments of `audio` (all of it without VAD), for a request already admitted."""
        return self._submit_spans(audio, self._speech_spans(audio), offset)

    def _speech_spans(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """(start, end) seconds of the speech in `audio`, as the VAD finds it; without VAD, all of it."""
        if self.vad is None:
            return [(0.0, len(audio) / self.sample_rate)] if len(audio) else []
        return self.vad.segments(audio)

    def _submit_spans(self, audio: np.ndarray, spans: list[tuple[float, float]],
                      offset: float) -> list[tuple[float, Future]]:
        rate = self.sample_rate
        return [(offset + start, self.batcher.submit(audio[int(start * rate):int(end * rate)])) for start, end in spans]

    def _collect(self, pieces: list[tuple[float, Future]], language: str | None,
                 duration: float | None) -> Transcript:
        try:
            outputs = [future.result() for _, future in pieces]
        finally:
            for _, future in pieces:
                future.cancel()
        return self._assemble([offset for offset, _ in pieces], outputs, language, duration)

    def _assemble(self, offsets: list[float], outputs: list[Transcript], language: str | None,
                  duration: float | None) -> Transcript:
        """One transcript from the pieces' transcripts, word times shifted to the audio the caller gave."""
        words = [Word(w.word, w.start + offset, w.end + offset, w.conf)
                 for offset, output in zip(offsets, outputs, strict=True) for w in output.words]
        text = " ".join(output.text for output in outputs if output.text)
        return Transcript(text=text, words=tuple(words), language=language or self.language, duration=duration)

    # Punctuation --------------------------------------------------------------------------------------

    @property
    def punctuates(self) -> bool:
        return self.punctuation is not None

    def punctuate(self, transcript: Transcript) -> Transcript:
        """The transcript with the punctuation model's case and punctuation (as it is without one); word
        times and confidences unchanged."""
        if self.punctuation is None or not transcript.words:
            return transcript
        return punctuated_transcript(transcript, self.punctuation.punctuate([w.word for w in transcript.words]))

    async def punctuate_async(self, transcript: Transcript) -> Transcript:
        if self.punctuation is None or not transcript.words:
            return transcript
        texts = await asyncio.wrap_future(self.punctuation.submit([w.word for w in transcript.words]))
        return punctuated_transcript(transcript, texts)

    async def punctuate_segment(self, segment: Segment) -> Segment:
        """A streaming final with the punctuation model's case and punctuation."""
        if self.punctuation is None or not segment.words:
            return segment
        texts = await asyncio.wrap_future(self.punctuation.submit([w.word for w in segment.words]))
        return Segment(text=" ".join(texts), words=punctuated_words(segment.words, texts))

    # Streaming ----------------------------------------------------------------------------------------

    def supports_cache_aware_streaming(self) -> bool:
        return not self.local_attention and supports_cache_aware_streaming(self.model)

    def start_streaming(self, params: StreamingParams) -> str:
        """Set up streaming as `params` say and warm up what serves the streams; returns the engine's name
        ("cache-aware" or "buffered"). Raises ModelLoadError for cache-aware streaming of a model that
        attends over its whole input."""
        cache_aware = params.engine == "cache_aware" or (params.engine == "auto"
                                                          and self.supports_cache_aware_streaming())
        if cache_aware and self._streamer is None:
            if not self.supports_cache_aware_streaming():
                raise ModelLoadError("this model attends over its whole input: it cannot stream with caches; "
                                     "use buffered streaming")
            with self.model_lock.exclusive():  # exporting its graphs changes the encoder's settings for a while
                self._streamer = CacheAwareStreamer(self.model, self.decoder, params.lookahead_ms, params.max_batch,
                                                    model_lock=self.model_lock, on_idle=release_free_memory,
                                                    onnx=self.onnx,
                                                    # One stepping thread: all the loops' threads are its.
                                                    onnx_threads=self.threads * self.config.batching.workers)
        self._streaming = params
        # Warm up only what serves the streams: each thread that runs torch keeps a pool of helper threads,
        # and more of them than cores slows every step (see `on_passing_thread`).
        (self._streamer if cache_aware else self).warm_up()
        return "cache-aware" if cache_aware else "buffered"

    def open_stream(self) -> Stream:
        """A new stream on the engine set up by `start_streaming`."""
        if self._streaming is None:
            raise RuntimeError("start_streaming first")
        if self._streamer is not None and self._streaming.engine != "buffered":
            return CacheAwareStream(self._streamer, self._streaming.pause_for_final)
        return BufferedStream(self.submit_raw, self.sample_rate, self._streaming)

    def warm_up(self) -> None:
        """One short inference on the inference loops, so that the first request does not pay for lazy
        initialisation (one per loop: each has its own thread pool to start)."""
        silence = np.zeros(self.sample_rate, dtype=np.float32)
        for future in [self.batcher.submit(silence) for _ in range(self.config.batching.workers)]:
            future.result()

    def close(self) -> None:
        self._preparing.shutdown(wait=False, cancel_futures=True)
        self._long_files.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()
        if self._streamer is not None:
            self._streamer.close()
        if self.punctuation is not None:
            self.punctuation.close()


def on_passing_thread(function, *args):
    """Run `function` on a thread that ends with it.

    OpenMP (the libgomp of PyTorch's CPU build) keeps a pool of helper threads for every thread that
    has run parallel torch code. Once a process holds more of them than there are cores, each
    parallel region wakes its helpers from sleep instead of finding them spinning, which doubled the
    time of a 60-s forward on 2 cores. So the threads that run the model are the only ones to keep a
    pool; loading (the model, the silero VAD) runs here, and its pool goes when the thread ends.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loading") as pool:
        return pool.submit(function, *args).result()


def _chain(head: list[np.ndarray], rest):
    yield from head
    yield from rest
