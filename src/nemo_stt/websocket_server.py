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
import contextlib
import json
import logging
import signal
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import metrics
from .audio import pcm16_to_float
from .engine import Engine, Segment, Stream, StreamingParams
from .lifecycle import CannotListen, Lifecycle, bearer, key_matches
from .settings import Settings

log = logging.getLogger(__name__)

# Close codes (RFC 6455)
UNSUPPORTED = 1003
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
TRY_AGAIN_LATER = 1013

# Largest frame the websockets library accepts (at 16 kHz, 32 s of audio), and frames it buffers for a
# connection whose reading is paused: together, what a client can make the server hold beyond its backlog.
MAX_FRAME_BYTES = 2**20
MAX_QUEUED_FRAMES = 4
# A client that reconnects at once may arrive before its previous connection's handler has ended.
WAIT_FOR_A_PLACE_SECONDS = 2.0


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamingServer:
    def __init__(self, engine: Engine, settings: Settings, lifecycle: Lifecycle | None = None):
        self.engine = engine
        self.settings = settings
        self.lifecycle = lifecycle or Lifecycle()
        self.params = StreamingParams(
            engine=settings.STREAMING_ENGINE,
            lookahead_ms=settings.STREAMING_LOOKAHEAD_MS,
            max_batch=settings.STREAMING_MAX_BATCH,
            min_chunk=settings.STREAMING_MIN_CHUNK_SIZE,
            buffer_trimming_sec=settings.STREAMING_BUFFER_TRIMMING_SEC,
            pause_for_final=settings.STREAMING_PAUSE_FOR_FINAL,
            max_words_in_buffer=settings.STREAMING_MAX_WORDS_IN_BUFFER,
        )
        self.max_backlog = settings.STREAMING_MAX_BACKLOG_SEC
        self.active = 0
        self.in_flight = 0
        self._place_freed = asyncio.Condition()
        self.streaming_engine = engine.start_streaming(self.params)  # "cache-aware" or "buffered"
        log.info("streaming engine: %s", self.streaming_engine)

    async def handle(self, connection: ServerConnection) -> None:
        if not self._authorized(connection):
            metrics.AUTH_FAILURES.labels("websocket").inc()
            metrics.STREAMS_REJECTED.labels("unauthorized").inc()
            await connection.close(POLICY, "a valid API key is required (Authorization: Bearer KEY, or ?api_key=)")
            return
        if self.lifecycle.draining:
            metrics.STREAMS_REJECTED.labels("draining").inc()
            await connection.close(TRY_AGAIN_LATER, "the server is shutting down; retry on another instance")
            return
        if not await self._take_place():
            metrics.STREAMS_REJECTED.labels("capacity").inc()
            await connection.close(TRY_AGAIN_LATER, f"too many connections ({self.active}); retry later")
            return
        self.in_flight += 1  # until its closing handshake is done, for the drain at shutdown
        try:
            await self._stream(connection)
        finally:
            self.in_flight -= 1

    async def _stream(self, connection: ServerConnection) -> None:
        code, reason = 1000, "end of stream"
        metrics.STREAMS_ACTIVE.inc()
        try:
            await self._serve(connection)
        except ProtocolError as error:
            log.info("closing a stream: %s", error.reason)
            code, reason = error.code, error.reason
        except ConnectionClosed:
            code = None  # the client left: its state goes with this coroutine
        finally:
            metrics.STREAMS_ACTIVE.dec()
            await self._give_place_back()  # before the closing handshake: the client may reconnect at once
        metrics.STREAMS_CLOSED.labels(str(code) if code is not None else "client_left").inc()
        if code is not None:
            await connection.close(code, reason)

    def _authorized(self, connection: ServerConnection) -> bool:
        """Whether the handshake carried the API key: the header OpenAI-style clients send, or `?api_key=`
        for browser clients, which cannot set headers on a websocket."""
        expected = self.settings.API_KEY
        if expected is None:
            return True
        request = connection.request
        if request is None:
            return False
        given = bearer(request.headers.get("Authorization"))
        if given is None:
            given = next(iter(parse_qs(urlsplit(request.path).query).get("api_key", [])), None)
        return key_matches(expected, given)

    async def _take_place(self) -> bool:
        async with self._place_freed:
            try:
                await asyncio.wait_for(self._place_freed.wait_for(
                    lambda: self.active < self.settings.STREAMING_MAX_CONNECTIONS), WAIT_FOR_A_PLACE_SECONDS)
            except TimeoutError:
                return False
            self.active += 1
            return True

    async def _give_place_back(self) -> None:
        async with self._place_freed:
            self.active -= 1
            self._place_freed.notify()

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
        stream = self.engine.open_stream()
        decoding = _Decoding(stream, _Sender(connection, self.settings.STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND,
                                               self.engine.punctuate_segment))
        packet_seconds: float | None = None
        silence_factor = self.settings.STREAMING_TIMEOUT_FOR_SILENCE
        last_data = time.monotonic()
        try:
            while True:
                if stream.backlog_seconds > self.max_backlog:
                    # Back-pressure: read nothing more from this client until its decoding catches up.
                    await decoding.caught_up(self.max_backlog)
                    last_data = time.monotonic()
                timeout = packet_seconds * silence_factor if (packet_seconds and silence_factor) else idle
                message = await self._receive(connection, timeout)
                decoding.check()
                if message is None:
                    if packet_seconds and silence_factor and time.monotonic() - last_data < idle:
                        # The client's VAD holds back silence: count the missing packet as silence.
                        stream.push(np.zeros(int(packet_seconds * self.engine.sample_rate), dtype=np.float32))
                        decoding.wake()
                        continue
                    await decoding.finish(only_words=True)  # what was said before the client went quiet
                    raise ProtocolError(POLICY, f"no data received for {idle:g} s")
                last_data = time.monotonic()
                if isinstance(message, bytes):
                    if len(message) % 2:
                        raise ProtocolError(INVALID_DATA, "PCM s16le frames must hold an even number of bytes")
                    seconds = len(message) / 2 / client_rate
                    if seconds > self.max_backlog:
                        raise ProtocolError(TOO_BIG, f"a frame of {seconds:g} s of audio; at most "
                                                     f"{self.max_backlog:g} s per frame")
                    if packet_seconds is None and message:
                        packet_seconds = seconds
                    stream.push(resampler(pcm16_to_float(message)))
                    decoding.wake()
                    continue
                if self._is_eof(message):
                    break
            await decoding.finish(only_words=False)
        finally:
            decoding.cancel()

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
        """Whether a text message ends the stream: `{"eof": x}` with x true (`{"eof": 0}` does not)."""
        payload = _json(message)
        if isinstance(payload, dict) and "eof" in payload:
            return bool(payload["eof"])
        raise ProtocolError(UNSUPPORTED, 'expected binary audio or {"eof": 1}')


class _Decoding:
    """A stream's decode loop, beside the loop that reads the client: steps one unit at a time as audio
    comes, sends partials and finals, and at the end decodes the rest and sends the last finals."""

    def __init__(self, stream: Stream, sender: "_Sender"):
        self.stream = stream
        self.sender = sender
        self._wake = asyncio.Event()
        self._stepped = asyncio.Event()
        self._ending = False
        self._only_words = False
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    def check(self) -> None:
        """Raise what made the decode loop fail, if it did."""
        if self._task.done() and not self._task.cancelled():
            self._task.result()

    async def caught_up(self, backlog: float) -> None:
        while self.stream.backlog_seconds > backlog and not self._task.done():
            self._stepped.clear()
            stepped = asyncio.ensure_future(self._stepped.wait())
            try:
                await asyncio.wait([stepped, self._task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stepped.cancel()
        self.check()

    async def finish(self, only_words: bool) -> None:
        """Decode what is left and send the last finals (with `only_words`, only finals that have words)."""
        self._ending, self._only_words = True, only_words
        self._wake.set()
        await self._task

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()

    async def _loop(self) -> None:
        stream, sender = self.stream, self.sender
        while True:
            while stream.ready():
                finals = await stream.step()
                self._stepped.set()
                for segment in finals:
                    await sender.final(segment)
                if not finals:
                    await sender.partial(stream.partial_text(), stream.decoded_seconds)
            # A pause can close a final between decodes, as soon as enough quiet audio has arrived.
            for segment in stream.pause_finals():
                await sender.final(segment)
            if self._ending:
                for segment in await stream.finish():
                    if segment.words or not self._only_words:
                        await sender.final(segment)
                return
            await self._wake.wait()
            self._wake.clear()


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
    """Sends partials at most `per_second` times a second (0: no limit), and finals always, through the
    punctuation model when there is one (partials stay as decoded: they change until their final)."""

    def __init__(self, connection: ServerConnection, per_second: float, punctuate):
        self.connection = connection
        self.punctuate = punctuate
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
        segment = await self.punctuate(segment)
        words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "conf": round(w.conf, 5)}
                 for w in segment.words]
        await self.connection.send(json.dumps({"text": segment.text, "start": round(segment.start, 3),
                                               "end": round(segment.end, 3), "words": words}))


@contextlib.asynccontextmanager
async def listen(server: StreamingServer, settings: Settings):
    """`server` listening on STREAMING_PORT; leaving the context closes the listening socket and the
    connections left (1001)."""
    # No keepalive pings from the server: STREAMING_IDLE_TIMEOUT closes silent connections, and the pong of a
    # client under back-pressure waits behind its own audio in the socket, so pings would close a client
    # for sending fast. No permessage-deflate either: PCM audio barely compresses, and inflating every frame
    # of every stream took a large share of the event loop with many streams (clients asking for it get
    # uncompressed frames, as the extension's negotiation allows).
    listening = serve(server.handle, "0.0.0.0", settings.STREAMING_PORT, max_size=MAX_FRAME_BYTES,
                      max_queue=MAX_QUEUED_FRAMES, ping_interval=None, compression=None)
    try:
        listener = await listening.__aenter__()
    except OSError as error:
        raise CannotListen(f"cannot listen on STREAMING_PORT={settings.STREAMING_PORT}: "
                           f"{error.strerror or error}") from None
    try:
        log.info("streaming on port %d", settings.STREAMING_PORT)
        yield listener
    finally:
        await listening.__aexit__(None, None, None)


async def run(engine: Engine, settings: Settings) -> None:
    """Serve streams until SIGTERM or SIGINT; then drain: new connections get 1013 while the streams in flight
    go on to their end (their last final and a 1000 close), for at most SHUTDOWN_GRACE_SECONDS; the streams
    left then are closed with 1001 (going away)."""
    lifecycle = Lifecycle()
    server = StreamingServer(engine, settings, lifecycle)
    metrics.watch_engine(engine)
    metrics.serve_on_port(settings.METRICS_PORT)
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    async with listen(server, settings):
        await stop.wait()
        lifecycle.draining = True
        grace = settings.SHUTDOWN_GRACE_SECONDS
        log.info("draining: %d stream(s) in flight, %g s of grace", server.in_flight, grace)
        deadline = loop.time() + grace
        while server.in_flight and loop.time() < deadline and not force.is_set():
            await asyncio.sleep(0.05)
        if server.in_flight:
            log.warning("shutdown grace of %g s over: closing %d stream(s) in flight (1001)", grace,
                        server.in_flight)
        else:
            log.info("drained: every stream in flight ended")
    # Leaving `serve` closed the listening socket and the connections left.
