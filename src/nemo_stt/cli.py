"""The `nemo-stt` command: `serve` starts the mode named by SERVICE_MODE, `transcribe` prints transcripts."""

import argparse
import json
import logging
import sys

from .settings import Settings, SettingsError, load_settings


def engine_config(settings: Settings):
    import torch

    from .engine import BatchPolicy, EngineConfig, VadConfig

    on_gpu = (settings.DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    batching = BatchPolicy(
        workers=settings.CONCURRENCY + 1,
        max_batch_items=settings.BATCH_MAX_SIZE or (16 if on_gpu else 1),
        max_batch_seconds=settings.BATCH_MAX_AUDIO_SEC,
        max_wait=settings.BATCH_MAX_WAIT_MS / 1000,
        queue_size=settings.QUEUE_MAX_SIZE,
    )
    vad = VadConfig(
        method=settings.VAD,
        dilatation=settings.VAD_DILATATION,
        min_speech=settings.VAD_MIN_SPEECH_DURATION,
        min_silence=settings.VAD_MIN_SILENCE_DURATION,
    ) if settings.VAD else None
    return EngineConfig(
        model=settings.MODEL,
        architecture=settings.ARCHITECTURE,
        device=settings.DEVICE,
        num_threads=settings.NUM_THREADS,
        batching=batching,
        language=settings.LANGUAGE,
        vad=vad,
        long_file_threshold=settings.LONG_FILE_THRESHOLD,
        long_file_chunk=settings.LONG_FILE_CHUNK_LEN,
        long_file_context=settings.LONG_FILE_CHUNK_CONTEXT_LEN,
        local_attention=settings.LONG_FILE_LOCAL_ATTENTION,
    )


def serve(settings: Settings) -> None:
    if settings.SERVICE_MODE == "task":
        from .task_worker import run_worker

        run_worker(settings)
        return
    if settings.SERVICE_MODE == "websocket":
        import asyncio

        from .engine import Engine
        from .websocket_server import run

        engine = Engine(engine_config(settings))
        engine.warm_up()
        asyncio.run(run(engine, settings))
        return
    import uvicorn

    from .engine import Engine
    from .http_api import create_app

    engine = Engine(engine_config(settings))
    engine.warm_up()
    app = create_app(engine, max_upload_bytes=int(settings.MAX_UPLOAD_MB * 1e6))
    uvicorn.run(app, host="0.0.0.0", port=settings.HTTP_PORT, log_level="info", timeout_graceful_shutdown=30)


def transcribe_files(settings: Settings, paths: list[str], as_json: bool) -> int:
    from . import results
    from .audio import AudioDecodeError
    from .engine import Engine

    engine = Engine(engine_config(settings))
    failures = 0
    for path in paths:
        try:
            transcript = engine.transcribe_source(path, progress=_progress_bar(path) if sys.stderr.isatty() else None)
        except AudioDecodeError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        if as_json:
            print(json.dumps(results.to_json(transcript), ensure_ascii=False))
        else:
            print(transcript.text if len(paths) == 1 else f"{path}\t{transcript.text}")
    return 1 if failures else 0


def _progress_bar(label: str):
    def show(fraction: float) -> None:
        filled = int(fraction * 30)
        end = "\n" if fraction >= 1 else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-stt", description="Speech-to-text server on NeMo ASR models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the mode named by SERVICE_MODE (configured by environment variables)")
    transcribe = commands.add_parser("transcribe", help="transcribe audio files and print the text")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument("--json", action="store_true", help="print the JSON of POST /transcribe, one per line")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    from .engine import ModelLoadError

    try:
        if args.command == "serve":
            serve(settings)
            return 0
        return transcribe_files(settings, args.files, args.json)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
