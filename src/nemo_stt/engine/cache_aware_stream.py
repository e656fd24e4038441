"""Cache-aware streaming for encoders trained with a limited right context (chunked FastConformer).

Each connection keeps its own encoder caches and decoder state; one thread runs a single batched
encoder step for every connection that has a chunk ready, streams at different positions included
(NeMo's caches are per batch row). Features are computed incrementally and exactly: a mel frame is
made once the audio under its whole window has arrived, so a stream needs no re-decoding.

Chunks are laid out as NeMo's cache-aware streaming lays them out: a first chunk a few frames shorter,
with no feature history, then chunks of one size, each preceded by the last frames of the one before.
With the model's default context this gives exactly the offline encoder output. Streams' first chunks
are encoded together, and so are their later chunks, whatever the streams' positions; the last chunk
of a stream is padded to the common size and its real length passed, so that the padding is masked.
"""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..results import Word
from .decoding import DecoderKind
from .model_lock import ModelLock
from .stream import Segment, Stream
from .transducer_greedy import GreedyTransducer

log = logging.getLogger(__name__)

# Encoder frames at the end of the decoded audio whose words may still come with the next chunk.
UNSETTLED_FRAMES = 4


def supports_cache_aware_streaming(model) -> bool:
    """Whether the encoder was trained with a limited right context, so that chunks can be encoded with caches."""
    from nemo.collections.asr.parts.mixins.streaming import StreamingEncoder

    encoder = model.encoder
    if not isinstance(encoder, StreamingEncoder) or not hasattr(encoder, "att_context_size_all"):
        return False
    contexts = [list(c) for c in encoder.att_context_size_all]
    causal_convs = getattr(encoder, "conv_context_size", None) is not None and encoder.conv_context_size[1] == 0
    return causal_convs and any(right >= 0 and left >= 0 for left, right in contexts)


@dataclass
class _StreamState:
    """What one connection needs between chunks; touched only by the stepping thread while a step runs."""

    # Both made by the stepping thread at the stream's first chunk (torch work stays on that thread).
    caches: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    feature_history: torch.Tensor | None = None  # the last pre-encode-cache frames before the next chunk
    real_frames: int | None = None  # once the stream ends: how many of its mel frames are not padding
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    audio_offset: int = 0  # stream sample index of audio[0], a multiple of the hop
    next_frame: int = 0  # index of the next mel frame to compute
    pending: list[torch.Tensor] = field(default_factory=list)  # mel frames not yet encoded
    pending_frames: int = 0
    frames_out: int = 0  # encoder frames decoded so far
    decoder_state: object = None  # RNNT: NeMo's decoder state; CTC: the last frame's label
    tokens: list[tuple[int, int, float]] = field(default_factory=list)  # (id, encoder frame, confidence)

    @property
    def frames_encoded(self) -> int:
        """Mel frames consumed by encoder steps."""
        return self.next_frame - self.pending_frames

    @property
    def started(self) -> bool:
        """Whether the first chunk was encoded."""
        return self.frames_encoded > 0


class CacheAwareStreamer:
    """Runs the batched encoder steps of every open stream on one thread."""

    def __init__(self, model, decoder: DecoderKind, lookahead_ms: float | None, max_batch: int = 64,
                 model_lock: ModelLock | None = None, on_idle: Callable[[], None] | None = None,
                 idle_after: float = 10.0, onnx=None, onnx_threads: int | None = None):
        """`model_lock`: shared with the engine's batcher, so that a step has the model alone; `on_idle`:
        called once after `idle_after` seconds without steps (to give freed memory back); `onnx`: the model's
        `OnnxGraphs`, to run the encoder steps in ONNX Runtime (on `onnx_threads` threads)."""
        self.model = model
        self._model_lock = model_lock or ModelLock()
        self._on_idle = on_idle
        self._idle_after = idle_after
        self.decoder = decoder
        # On a CPU, RNNT chunks are decoded by the NumPy greedy decoder where it gives NeMo's results.
        greedy = GreedyTransducer.for_decoding(model.decoding) if decoder == "rnnt" else None
        self._greedy = greedy if greedy is not None and greedy.streams else None
        encoder = model.encoder
        stride = float(model.cfg.preprocessor.window_stride)
        self.sample_rate = int(model.cfg.preprocessor.sample_rate)
        self.hop = round(stride * self.sample_rate)
        featurizer = model.preprocessor.featurizer
        self.n_fft = int(featurizer.n_fft)
        self.subsampling = int(encoder.subsampling_factor)
        self.frame_seconds = stride * self.subsampling
        self.att_context_size = self._choose_context(encoder, lookahead_ms, self.frame_seconds)
        # Offline transcription keeps the model's own context: steps switch to theirs and back (`_in_context`).
        self._model_context = list(encoder.att_context_size)
        encoder.set_default_att_context_size(self.att_context_size)
        config = encoder.streaming_cfg
        self.shift_frames = int(_second(config.shift_size))
        self.first_frames = int(_first(config.shift_size))
        self.pre_cache_frames = int(_second(config.pre_encode_cache_size))
        self.drop_pre_encoded = int(config.drop_extra_pre_encoded)
        try:
            self._onnx = onnx.streaming(self.att_context_size, self.pre_cache_frames, self.first_frames,
                                        self.shift_frames, self.drop_pre_encoded,
                                        onnx_threads) if onnx is not None else None
        finally:
            encoder.set_default_att_context_size(self._model_context)
        self.features = int(encoder._feat_in)
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.encoder_steps = 0  # batched steps run, and the stream chunks they encoded
        self.chunks_encoded = 0
        self._queue: list[tuple[_StreamState, Future, np.ndarray, bool]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cache-aware-streaming", daemon=True)
        self._thread.start()
        log.info("cache-aware streaming: att_context_size %s, chunks of %d ms", self.att_context_size,
                 round(self.chunk_seconds * 1000))

    @property
    def chunk_seconds(self) -> float:
        return self.shift_frames * self.hop / self.sample_rate

    @staticmethod
    def _choose_context(encoder, lookahead_ms: float | None, frame_seconds: float) -> list[int]:
        """The trained context whose chunk ((right context + 1) frames) is closest to `lookahead_ms`."""
        contexts = [list(c) for c in encoder.att_context_size_all if c[1] >= 0]
        if lookahead_ms is None:
            default = list(encoder.att_context_size)
            return default if default in contexts else contexts[0]
        return min(contexts, key=lambda c: abs((c[1] + 1) * frame_seconds * 1000 - lookahead_ms))

    def new_state(self) -> _StreamState:
        return _StreamState()

    def warm_up(self) -> None:
        """One second of silence through the stepping thread, so that the first stream does not pay for
        lazy initialisation."""
        self.step(self.new_state(), np.zeros(self.sample_rate, dtype=np.float32), flush=True).result()

    def frames_needed(self, state: _StreamState) -> int:
        """Mel frames that the stream's next chunk takes."""
        return self.shift_frames if state.started else self.first_frames

    def frames_available(self, received_samples: int) -> int:
        """Mel frames whose whole window lies within the first `received_samples` samples."""
        return max(0, (received_samples - self.n_fft // 2) // self.hop + 1)

    def step(self, state: _StreamState, audio: np.ndarray, flush: bool = False) -> Future:
        """Add audio to a stream and encode every whole chunk it then holds; new tokens go to `state.tokens`.

        A stream has at most one step in flight: the future is done when its state may be read again.

        With `flush`, the stream ends: its audio is padded so that the last partial chunk is encoded too.
        """
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the streaming engine is closed")
            self._queue.append((state, future, audio, flush))
            self._ready.notify()
        return future

    def close(self) -> None:
        """As the batcher closes: steps still queued are cancelled, the one running ends first."""
        with self._ready:
            self._closed = True
            for _, future, _, _ in self._queue:
                future.cancel()
            self._queue.clear()
            self._ready.notify()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        idle_handled = True  # nothing to release before the first step
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    if idle_handled or self._on_idle is None:
                        self._ready.wait()
                    elif not self._ready.wait(self._idle_after) and not self._queue:
                        break
                if self._closed:
                    return
                work, self._queue = self._queue, []
            if not work:
                idle_handled = True
                self._on_idle()
                continue
            idle_handled = False
            work = [item for item in work if item[1].set_running_or_notify_cancel()]
            try:
                with self._model_lock.exclusive(), self._in_context():
                    self._process(work)
            except Exception as error:  # a failed step fails its streams, never the thread
                log.exception("streaming step failed")
                for _, future, _, _ in work:
                    if not future.done():
                        future.set_exception(error)

    @contextmanager
    def _in_context(self) -> Iterator[None]:
        if self.att_context_size == self._model_context:
            yield
            return
        self.model.encoder.set_default_att_context_size(self.att_context_size)
        try:
            yield
        finally:
            self.model.encoder.set_default_att_context_size(self._model_context)

    @torch.inference_mode()
    def _process(self, work: list) -> None:
        self._add_features([(state, audio, flush) for state, _, audio, flush in work])
        # Every stream with a whole chunk takes part in each encoder step until none has one left.
        while True:
            ready = [state for state, *_ in work if state.pending_frames >= self.frames_needed(state)]
            if not ready:
                break
            # First chunks have a shape of their own: they are encoded together, then the others.
            firsts = [state for state in ready if not state.started]
            group = firsts or ready
            for start in range(0, len(group), self.max_batch):
                self._encode(group[start : start + self.max_batch], first=bool(firsts))
        for _, future, _, _ in work:
            if not future.done():
                future.set_result(None)

    def _add_features(self, additions: list[tuple[_StreamState, np.ndarray, bool]]) -> None:
        """Append each stream's new audio and compute, in one batched call, the mel frames it completes."""
        rows = []
        for state, audio, flush in additions:
            if audio.size:
                state.audio = np.concatenate([state.audio, audio.astype(np.float32, copy=False)])
            received = state.audio_offset + len(state.audio)
            if flush:
                # Zeros after the end: enough for the last frames' windows and for a whole last chunk.
                frames_total = self.frames_available(received + self.n_fft // 2)
                state.real_frames = received // self.hop + 1  # as many as offline feature extraction makes
                available = state.pending_frames + frames_total - state.next_frame
                if state.started:
                    missing = -available % self.shift_frames
                elif available <= self.first_frames:
                    missing = self.first_frames - available
                else:
                    missing = -(available - self.first_frames) % self.shift_frames
                pad = self.n_fft // 2 + missing * self.hop
                state.audio = np.concatenate([state.audio, np.zeros(pad, dtype=np.float32)])
                received += pad
            last = self.frames_available(received)
            if last > state.next_frame:
                rows.append((state, last))
        if not rows:
            return
        # Frames are taken only where their whole window lies inside a row's audio, so the zeros that pad
        # shorter rows change none of them.
        lengths = [len(state.audio) for state, _ in rows]
        signal = np.zeros((len(rows), max(lengths)), dtype=np.float32)
        for row, (state, _) in enumerate(rows):
            signal[row, : lengths[row]] = state.audio
        features, _ = self.model.preprocessor(
            input_signal=torch.from_numpy(signal).to(self.device),
            length=torch.tensor(lengths, device=self.device),
        )
        for row, (state, last) in enumerate(rows):
            first_local = state.next_frame - state.audio_offset // self.hop
            new = features[row, :, first_local : first_local + last - state.next_frame]
            state.pending.append(new)
            state.pending_frames += new.shape[1]
            state.next_frame = last
            # Keep the audio under the next frame's window and one sample before it (pre-emphasis).
            keep_from = max(0, ((last * self.hop - self.n_fft // 2 - 1) // self.hop) * self.hop)
            state.audio = state.audio[keep_from - state.audio_offset :]
            state.audio_offset = keep_from

    def _encode(self, states: list[_StreamState], first: bool) -> None:
        size = self.first_frames if first else self.shift_frames
        chunks, lengths = [], []
        # The caches' batch dimension: NeMo's layout puts the layers first, the ONNX graphs the batch.
        batch_dim = 0 if self._onnx is not None else 1
        for state in states:
            if state.caches is None:
                caches = self.model.encoder.get_initial_cache_state(batch_size=1, device=self.device)
                if self._onnx is not None:
                    caches = (caches[0].transpose(0, 1).contiguous(), caches[1].transpose(0, 1).contiguous(),
                              caches[2])
                state.caches = caches
                state.feature_history = torch.zeros(self.features, 0, device=self.device)
            real = size if state.real_frames is None else max(0, min(size, state.real_frames - state.frames_encoded))
            pending = torch.cat(state.pending, dim=1) if len(state.pending) > 1 else state.pending[0]
            chunk, rest = pending[:, :size], pending[:, size:]
            state.pending = [rest] if rest.shape[1] else []
            state.pending_frames = rest.shape[1]
            chunks.append(torch.cat([state.feature_history, chunk], dim=1))
            lengths.append(state.feature_history.shape[1] + real)
            state.feature_history = chunk[:, size - self.pre_cache_frames :]
        signal = torch.stack(chunks)
        lengths = torch.tensor(lengths, dtype=torch.long, device=self.device)
        cache_channel = torch.cat([s.caches[0] for s in states], dim=batch_dim)
        cache_time = torch.cat([s.caches[1] for s in states], dim=batch_dim)
        cache_len = torch.cat([s.caches[2] for s in states], dim=0)
        if self._onnx is not None:
            encoded, encoded_len, cache_channel, cache_time, cache_len = self._onnx.step(
                signal, lengths, cache_channel, cache_time, cache_len, first)
        else:
            encoded, encoded_len, cache_channel, cache_time, cache_len = self.model.encoder.cache_aware_stream_step(
                processed_signal=signal, processed_signal_length=lengths, cache_last_channel=cache_channel,
                cache_last_time=cache_time, cache_last_channel_len=cache_len, keep_all_outputs=False,
                drop_extra_pre_encoded=0 if first else self.drop_pre_encoded,
            )
        for row, state in enumerate(states):
            state.caches = (cache_channel.narrow(batch_dim, row, 1), cache_time.narrow(batch_dim, row, 1),
                            cache_len[row : row + 1])
        if self.decoder == "ctc":
            self._decode_ctc(states, encoded, encoded_len)
        else:
            self._decode_rnnt(states, encoded, encoded_len)
        for row, state in enumerate(states):
            state.frames_out += int(encoded_len[row])
        self.encoder_steps += 1
        self.chunks_encoded += len(states)

    def _decode_ctc(self, states: list[_StreamState], encoded: torch.Tensor, encoded_len: torch.Tensor) -> None:
        head = getattr(self.model, "ctc_decoder", None) or self.model.decoder
        log_probs = head(encoder_output=encoded)
        blank = log_probs.shape[-1] - 1
        best, labels = log_probs.max(dim=-1)
        # Greedy CTC for the whole batch at once: a frame emits when it is not blank and differs from the
        # frame before it (the previous chunk's last frame for the first one).
        previous = torch.tensor([-1 if s.decoder_state is None else s.decoder_state for s in states],
                                device=labels.device)
        before = torch.cat([previous[:, None], labels[:, :-1]], dim=1)
        frames = torch.arange(labels.shape[1], device=labels.device)[None, :]
        emits = (labels != blank) & (labels != before) & (frames < encoded_len[:, None])
        rows, times = emits.nonzero(as_tuple=True)
        for row, t, label, prob in zip(rows.tolist(), times.tolist(), labels[rows, times].tolist(),
                                       best[rows, times].exp().tolist(), strict=True):
            states[row].tokens.append((label, states[row].frames_out + t, prob))
        last = labels.gather(1, (encoded_len - 1).clamp(min=0)[:, None])[:, 0].tolist()
        for row, state in enumerate(states):
            if int(encoded_len[row]) > 0:
                state.decoder_state = last[row]

    def _decode_rnnt(self, states: list[_StreamState], encoded: torch.Tensor, encoded_len: torch.Tensor) -> None:
        from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

        if self._greedy is not None:
            decoded = self._greedy.decode_chunks(encoded, encoded_len, [s.decoder_state for s in states])
            for state, (tokens, decoder_state) in zip(states, decoded, strict=True):
                state.tokens.extend(tokens)
                state.decoder_state = decoder_state
            return

        # Fresh hypotheses carrying only the decoder state: NeMo appends this chunk's tokens to them, with
        # times counted from the stream's first frame (the state holds how many frames were decoded).
        partial = [Hypothesis(score=0.0, y_sequence=None, dec_state=s.decoder_state) if s.decoder_state is not None
                   else None for s in states]
        (hypotheses,) = self.model.decoding.decoding(
            encoder_output=encoded, encoded_lengths=encoded_len, partial_hypotheses=partial
        )
        for state, hypothesis in zip(states, hypotheses, strict=True):
            ids = _as_list(hypothesis.y_sequence)
            times = _as_list(hypothesis.timestamp)
            confidences = _as_list(getattr(hypothesis, "non_blank_step_confidence_precomputed", None))
            for index, token in enumerate(ids):
                conf = float(confidences[index]) if index < len(confidences) else 1.0
                state.tokens.append((int(token), int(times[index]), conf))
            state.decoder_state = hypothesis.dec_state


def _first(value):
    """NeMo gives [first chunk, other chunks] for some streaming sizes, one value when they are equal."""
    return value[0] if isinstance(value, list) else value


def _second(value):
    return value[1] if isinstance(value, list) else value


def _as_list(values) -> list:
    if values is None:
        return []
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return list(values)


class CacheAwareStream(Stream):
    """One connection's stream, backed by a `CacheAwareStreamer`: one chunk per step."""

    def __init__(self, streamer: CacheAwareStreamer, pause_for_final: float):
        super().__init__(streamer.sample_rate, pause_for_final, UNSETTLED_FRAMES * streamer.frame_seconds)
        self.streamer = streamer
        self._tokenizer = streamer.model.tokenizer
        self._state = streamer.new_state()
        self._sent = 0  # samples handed to the streamer
        self._tokens: list[tuple[int, int, float]] = []  # since the last final
        self._words: list[Word] | None = None  # the pending tokens as words, until the tokens change
        self._in_flight: asyncio.Future | None = None

    @property
    def decoded_seconds(self) -> float:
        """Seconds of the stream covered by the encoder steps so far."""
        return self._state.frames_out * self.streamer.frame_seconds

    def _next_chunk_end(self) -> int:
        """Stream samples needed for the stream's next chunk of mel frames."""
        state, streamer = self._state, self.streamer
        missing = streamer.frames_needed(state) - state.pending_frames
        return (state.next_frame + missing - 1) * streamer.hop + streamer.n_fft // 2

    def ready(self) -> bool:
        return self._sent + self._queue.samples >= self._next_chunk_end()

    async def _decode_unit(self) -> None:
        await self._run(self._queue.take(self._next_chunk_end() - self._sent), flush=False)

    async def _decode_rest(self) -> None:
        await self._run(self._queue.take(self._queue.samples), flush=True)

    async def _run(self, audio: np.ndarray | None = None, flush: bool = False) -> None:
        if audio is None:  # everything queued
            audio = self._queue.take(self._queue.samples)
        self._sent += len(audio)
        if self._in_flight is not None:
            # A step whose caller was cancelled still runs to the end: wait for it, so that its tokens are
            # kept and the state is never in two steps at once.
            await self._in_flight
        self._in_flight = asyncio.wrap_future(self.streamer.step(self._state, audio, flush=flush))
        await asyncio.shield(self._in_flight)
        self._in_flight = None
        if self._state.tokens:
            self._tokens += self._state.tokens
            self._words = None
        self._state.tokens = []

    def _pending_words(self) -> list[Word]:
        # Asked after every packet of every stream (the pause rule): words are made once per change of tokens.
        if self._words is None:
            self._words = [_word(group, self._tokenizer, self.streamer.frame_seconds) for group in self._groups()]
        return self._words

    def _groups(self) -> list[list[tuple[int, int, float]]]:
        """The pending tokens grouped into words ("▁" starts one)."""
        pieces = self._tokenizer.ids_to_tokens([token for token, _, _ in self._tokens])
        groups: list[list[tuple[int, int, float]]] = []
        for piece, token in zip(pieces, self._tokens, strict=True):
            if piece.startswith("▁") or not groups:
                groups.append([])
            groups[-1].append(token)
        return groups

    def _close(self, count: int) -> Segment:
        groups = self._groups()
        words = tuple(_word(group, self._tokenizer, self.streamer.frame_seconds) for group in groups[:count])
        self._tokens = [token for group in groups[count:] for token in group]
        self._words = None
        return Segment(" ".join(w.word for w in words), words)


def _word(group: list[tuple[int, int, float]], tokenizer, frame_seconds: float) -> Word:
    text = tokenizer.ids_to_text([token for token, _, _ in group]).strip()
    conf = float(np.mean([c for _, _, c in group]))
    return Word(text, group[0][1] * frame_seconds, (group[-1][1] + 1) * frame_seconds, min(1.0, max(0.0, conf)))
