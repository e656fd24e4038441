"""Websocket mode: LinTO's streaming protocol on any path.

1. The client sends `{"config": {"sample_rate": N}}` (an optional "language" is accepted).
2. Then binary frames of PCM s16le mono at N Hz, of any size, and finally `{"eof": 1}`.
3. The server answers `{"partial": "...", "decoded": s}` after decodes while speech goes on
   ("decoded": seconds of the stream it accounts for) and `{"text": "...", "start", "end", "words"}`
   after each pause (times in seconds from the start of the stream); after eof, a last
   `{"text": ...}` and a normal close.

Models trained with a limited right context stream with encoder caches, all connections' chunks
encoded in one batched step; other models re-decode a trimmed buffer per connection through the
engine's batcher. Either way the event loop only moves bytes.
Bad input closes that connection with a code and a reason, and frees its state.
"""

import asyncio
import json
import logging
import time

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .audio import pcm16_to_float
from .engine import Engine
from .engine.buffered_stream import BufferedStream, Segment, StreamingParams
from .engine.cache_aware_stream import CacheAwareStream
from .settings import Settings

log = logging.getLogger(__name__)

# Close codes (RFC 6455)
UNSUPPORTED = 1003
INVALID_DATA = 1007
POLICY = 1008
TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamingServer:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.params = StreamingParams(
            min_chunk=settings.STREAMING_MIN_CHUNK_SIZE,
            buffer_trimming_sec=settings.STREAMING_BUFFER_TRIMMING_SEC,
            pause_for_final=settings.STREAMING_PAUSE_FOR_FINAL,
            max_words_in_buffer=settings.STREAMING_MAX_WORDS_IN_BUFFER,
        )
        self.active = 0
        # Streaming with encoder caches when the model allows it; otherwise a re-decoded buffer.
        self.streamer = None
        if settings.STREAMING_ENGINE == "cache_aware" or (
            settings.STREAMING_ENGINE == "auto" and engine.supports_cache_aware_streaming()
        ):
            self.streamer = engine.cache_aware_streamer(settings.STREAMING_LOOKAHEAD_MS)
        # Warm up only what serves the streams: each stepping thread that runs torch keeps a pool of
        # helper threads, and more of them than cores slows every step (see the engine's model loading).
        (self.streamer or engine).warm_up()
        log.info("streaming engine: %s", "cache-aware" if self.streamer else "buffered")

    def new_stream(self) -> BufferedStream | CacheAwareStream:
        if self.streamer is not None:
            return CacheAwareStream(self.streamer, self.settings.STREAMING_PAUSE_FOR_FINAL)
        return BufferedStream(self.engine.submit_raw, self.engine.sample_rate, self.params)

    async def handle(self, connection: ServerConnection) -> None:
        if self.active >= self.settings.STREAMING_MAX_CONNECTIONS:
            await connection.close(TRY_AGAIN_LATER, f"too many connections ({self.active}); retry later")
            return
        self.active += 1
        try:
            await self._serve(connection)
        except ProtocolError as error:
            log.info("closing a stream: %s", error.reason)
            await connection.close(error.code, error.reason)
        except ConnectionClosed:
            pass  # the client left: its state goes with this coroutine
        finally:
            self.active -= 1

    async def _receive(self, connection: ServerConnection, timeout: float | None):
        try:
            return await asyncio.wait_for(connection.recv(), timeout)
        except TimeoutError:
            return None

    async def _serve(self, connection: ServerConnection) -> None:
        idle = self.settings.STREAMING_IDLE_TIMEOUT
        first = await self._receive(connection, idle)
        if first is None:
            raise ProtocolError(POLICY, f"no config received within {idle:g} s")
        client_rate = self._parse_config(first)
        resampler = _Resampler(client_rate, self.engine.sample_rate)
        stream = self.new_stream()
        sender = _Sender(connection, self.settings.STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND)
        wake = asyncio.Event()
        decoder = asyncio.create_task(self._decode_loop(stream, sender, wake))
        packet_seconds: float | None = None
        silence_factor = self.settings.STREAMING_TIMEOUT_FOR_SILENCE
        last_data = time.monotonic()
        try:
            while True:
                timeout = packet_seconds * silence_factor if (packet_seconds and silence_factor) else idle
                message = await self._receive(connection, timeout)
                if decoder.done():
                    decoder.result()  # surfaces a decoding failure
                if message is None:
                    if packet_seconds and silence_factor and time.monotonic() - last_data < idle:
                        # The client's VAD holds back silence: count the missing packet as silence.
                        stream.push(np.zeros(int(packet_seconds * self.engine.sample_rate), dtype=np.float32))
                        wake.set()
                        continue
                    raise ProtocolError(POLICY, f"no data received for {idle:g} s")
                last_data = time.monotonic()
                if isinstance(message, bytes):
                    if len(message) % 2:
                        raise ProtocolError(INVALID_DATA, "PCM s16le frames must hold an even number of bytes")
                    if packet_seconds is None and message:
                        packet_seconds = len(message) / 2 / client_rate
                    stream.push(resampler(pcm16_to_float(message)))
                    wake.set()
                    continue
                if self._is_eof(message):
                    break
            decoder.cancel()
            await asyncio.gather(decoder, return_exceptions=True)
            last = await stream.finish()
            await sender.final(last)
            await connection.close(1000, "end of stream")
        finally:
            if not decoder.done():
                decoder.cancel()

    async def _decode_loop(self, stream: BufferedStream | CacheAwareStream, sender: "_Sender",
                           wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while stream.ready():
                segment = await stream.step()
                if segment is not None:
                    await sender.final(segment)
                else:
                    await sender.partial(stream.partial_text(), stream.decoded_seconds)
            # A pause can close a final between decodes, as soon as enough quiet audio has arrived.
            segment = stream.pause_final()
            if segment is not None:
                await sender.final(segment)

    def _parse_config(self, message) -> int:
        if isinstance(message, bytes):
            raise ProtocolError(POLICY, 'send {"config": {"sample_rate": N}} before any audio')
        payload = _json(message)
        config = payload.get("config") if isinstance(payload, dict) else None
        if not isinstance(config, dict):
            raise ProtocolError(POLICY, 'the first message must be {"config": {"sample_rate": N}}')
        rate = config.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 1000 <= rate <= 384000:
            raise ProtocolError(INVALID_DATA, f"config.sample_rate must be a number of Hz, got {rate!r}")
        return int(rate)

    def _is_eof(self, message: str) -> bool:
        payload = _json(message)
        if isinstance(payload, dict) and "eof" in payload:
            return True
        raise ProtocolError(UNSUPPORTED, 'expected binary audio or {"eof": 1}')


def _json(message: str):
    try:
        return json.loads(message)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError(INVALID_DATA, "invalid JSON") from None


class _Resampler:
    def __init__(self, from_rate: int, to_rate: int):
        import soxr

        self._stream = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return audio if self._stream is None else self._stream.resample_chunk(audio)


class _Sender:
    """Sends partials at most `per_second` times a second (0: no limit), and finals always."""

    def __init__(self, connection: ServerConnection, per_second: float):
        self.connection = connection
        self.interval = 1.0 / per_second if per_second else 0.0
        self.last_partial = 0.0

    async def partial(self, text: str, decoded: float) -> None:
        """`decoded`: seconds of the stream that the partial accounts for (lets clients measure latency)."""
        now = time.monotonic()
        if now - self.last_partial < self.interval:
            return
        self.last_partial = now
        await self.connection.send(json.dumps({"partial": text, "decoded": round(decoded, 3)}))

    async def final(self, segment: Segment) -> None:
        words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "conf": round(w.conf, 5)}
                 for w in segment.words]
        await self.connection.send(json.dumps({"text": segment.text, "start": round(segment.start, 3),
                                               "end": round(segment.end, 3), "words": words}))


async def run(engine: Engine, settings: Settings) -> None:
    server = StreamingServer(engine, settings)
    async with serve(server.handle, "0.0.0.0", settings.STREAMING_PORT, max_size=2**22) as ws_server:
        log.info("streaming on port %d", settings.STREAMING_PORT)
        await ws_server.serve_forever()
