"""The `nemo-stt` command: `serve` starts the mode(s) named by SERVICE_MODE, `transcribe` prints transcripts."""

import argparse
import json
import logging
import os
import sys

from .allocator import jemalloc_loaded, relaunch_on_jemalloc
from .lifecycle import CannotListen
from .service import load_engine
from .settings import Settings, SettingsError, load_settings


def serve(settings: Settings) -> None:
    if len(settings.modes) > 1:  # http and websocket: settings refuse task with another mode
        import asyncio

        from .combined import run as run_modes

        asyncio.run(run_modes(load_engine(settings, warm_up=False), settings))  # warms up what the modes use
        return
    if settings.SERVICE_MODE == "task":
        from .task_worker import run_worker

        run_worker(settings)
        return
    if settings.SERVICE_MODE == "websocket":
        import asyncio

        from .websocket_server import run

        asyncio.run(run(load_engine(settings, warm_up=False), settings))  # the server warms up what it uses
        return
    from .http_api import run

    run(load_engine(settings), settings)


def transcribe_files(settings: Settings, paths: list[str], as_json: bool) -> int:
    from . import results
    from .audio import AudioDecodeError

    engine = load_engine(settings, warm_up=False)
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
    commands.add_parser("serve", help="start the mode(s) named by SERVICE_MODE (configured by environment variables)")
    transcribe = commands.add_parser("transcribe", help="transcribe audio files and print the text")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument("--json", action="store_true", help="print the JSON of POST /transcribe, one per line")
    args = parser.parse_args(argv)

    # stdout carries the transcripts: NeMo, which logs INFO to stdout, is told to log to stderr (it reads
    # this when it is first imported, which is later).
    os.environ.setdefault("NEMO_REDIRECT_LOGS_TO_STDERR", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    if argv is None:  # started as a command, not called in-process
        relaunch_on_jemalloc([sys.executable, "-m", "nemo_stt", *sys.argv[1:]], settings)
    logging.getLogger(__name__).info("memory allocator: %s",
                                     "jemalloc" if jemalloc_loaded() else "the C library's malloc")
    from .engine import ModelLoadError

    try:
        if args.command == "serve":
            serve(settings)
            return 0
        return transcribe_files(settings, args.files, args.json)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CannotListen as error:
        print(f"error: {error}", file=sys.stderr)
        return 1  # as uvicorn exits when HTTP_PORT cannot be bound


if __name__ == "__main__":
    sys.exit(main())
