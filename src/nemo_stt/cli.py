"""The `nemo-stt` command: `serve` starts the mode(s) named by SERVICE_MODE, `transcribe` transcribes files."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .allocator import jemalloc_loaded, relaunch_on_jemalloc
from .lifecycle import CannotListen
from .service import load_engine
from .settings import Settings, SettingsError, load_settings

FORMATS = ("text", "json", "srt", "vtt", "verbose_json")
EXTENSIONS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt", "verbose_json": ".json"}


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


def render(transcript, output_format: str) -> str:
    """A transcript in `output_format`, as the HTTP routes give it: text, json and the subtitles as
    POST /transcribe answers them, verbose_json as POST /v1/audio/transcriptions does (words and segments)."""
    from . import openai_api, results

    if output_format == "json":
        return _json(results.to_json(transcript))
    if output_format == "verbose_json":
        return _json(openai_api.verbose_json(transcript))
    if output_format == "srt":
        return results.to_srt(transcript)
    if output_format == "vtt":
        return results.to_vtt(transcript)
    return results.to_text(transcript)


def _json(content: dict) -> str:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))  # as the routes' JSONResponse


def output_paths(paths: list[str], directory: Path, output_format: str) -> list[Path]:
    """One output file per input, named after it (meeting.wav -> DIR/meeting.srt). Inputs with the same stem
    (a/meeting.wav and b/meeting.mp3) do not overwrite each other: the first on the command line gets
    meeting.srt, the next meeting-2.srt, then meeting-3.srt..., skipping any name another input gets."""
    extension = EXTENSIONS[output_format]
    stems = [Path(path).stem or "audio" for path in paths]
    first = {}
    for index, stem in enumerate(stems):
        first.setdefault(stem, index)
    taken = set(first)
    names = []
    for index, stem in enumerate(stems):
        name = stem
        if first[stem] != index:
            number = 2
            while f"{stem}-{number}" in taken:
                number += 1
            name = f"{stem}-{number}"
            taken.add(name)
        names.append(directory / f"{name}{extension}")
    return names


class FileFailed(Exception):
    """One input could not be transcribed; the message says why, in a line."""


def transcribe_files(settings: Settings, paths: list[str], output_format: str = "text",
                     output_dir: Path | None = None) -> int:
    """Transcribe each file in turn; 1 if any failed (each with a line on stderr), else 0."""
    engine = load_engine(settings, warm_up=False)
    destinations = output_paths(paths, output_dir, output_format) if output_dir is not None else None
    failures = 0
    for index, path in enumerate(paths):
        try:
            content = render(_transcribe(engine, settings, path), output_format)
            if destinations is not None:
                _write(destinations[index], content)
                print(f"{path} -> {destinations[index]}", file=sys.stderr)
            else:
                _print(path, content, output_format, several=len(paths) > 1, first=index == 0)
        except FileFailed as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _transcribe(engine, settings: Settings, path: str):
    from .audio import AudioDecodeError, AudioStream, too_long

    try:
        with open(path, "rb"):  # a missing, unreadable path or a folder, in the system's words
            pass
        with AudioStream(path, engine.sample_rate) as stream:  # the header only: what it says costs nothing
            stated = stream.duration
        if reason := too_long(stated, settings.MAX_AUDIO_SECONDS):
            raise FileFailed(reason)
        bar = ProgressBar(path, long=stated is not None and stated > settings.LONG_FILE_THRESHOLD)
        try:
            transcript = engine.transcribe_source(path, progress=bar if sys.stderr.isatty() else None)
        finally:
            bar.close()
    except OSError as error:
        raise FileFailed((error.strerror or str(error)).lower()) from None
    except AudioDecodeError as error:
        raise FileFailed(str(error)) from None
    except FileFailed:
        raise
    except Exception as error:  # any other failure of one file: the others go on
        logging.getLogger(__name__).debug("%s failed", path, exc_info=True)
        raise FileFailed(f"transcription failed ({type(error).__name__}: {error})") from None
    if reason := too_long(transcript.duration, settings.MAX_AUDIO_SECONDS):  # a container stating no duration
        raise FileFailed(reason)
    return transcript


def _write(destination: Path, content: str) -> None:
    # Written aside, then renamed: an interrupted run leaves no half-written transcript under the real name.
    partial = destination.with_name(f".{destination.name}.part")
    try:
        partial.write_text(content if content.endswith("\n") else content + "\n", encoding="utf-8")
        partial.replace(destination)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise FileFailed(f"cannot write {destination}: {(error.strerror or str(error)).lower()}") from None


def _print(path: str, content: str, output_format: str, several: bool, first: bool) -> None:
    if not several or output_format in ("json", "verbose_json"):  # JSON: one document per line
        print(content.rstrip("\n"))
    elif output_format == "text":
        print(f"{path}\t{content}")
    else:  # subtitles of several files: each under a header line, as `head` and `tail` show several files
        print(("" if first else "\n") + f"==> {path} <==")
        print(content.rstrip("\n"))


class ProgressBar:
    """A bar on stderr while a long file is transcribed (one the engine reads in windows, reporting after each).

    A short file, done in one forward, gets none. A long file's bar is drawn from the start when its container
    states its duration, else from the first window done.
    """

    WIDTH = 30

    def __init__(self, label: str, long: bool):
        self.label = label
        self.drawn = False
        self.ended = False
        if long and sys.stderr.isatty():
            self(0.0)

    def __call__(self, fraction: float) -> None:
        if self.ended or (fraction >= 1 and not self.drawn):
            return  # told again that it is done; or a short file, done before there was anything to show
        self.drawn = True
        filled = int(fraction * self.WIDTH)
        self.ended = fraction >= 1
        print(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}",
              end="\n" if self.ended else "", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.drawn and not self.ended:  # a failure mid-file: its message goes on a line of its own
            print(file=sys.stderr, flush=True)
            self.ended = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-stt", description="Speech-to-text server on NeMo ASR models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the mode(s) named by SERVICE_MODE (configured by environment variables)")
    transcribe = commands.add_parser(
        "transcribe", help="transcribe audio files: print the transcripts, or write one file per input",
        description="Transcribe audio files with the model the environment names (or --model). Exits 1 when a "
                    "file fails (one line on stderr each; the others are transcribed), 2 when none can be.")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument("--format", choices=FORMATS, default="text",
                            help="text (default); json, the JSON of POST /transcribe; srt or vtt subtitles; "
                                 "verbose_json, as POST /v1/audio/transcriptions gives it, with words and segments")
    transcribe.add_argument("--json", action="store_const", const="json", dest="format",
                            help="the same as --format json")
    transcribe.add_argument("--output-dir", type=Path, metavar="DIR",
                            help="write DIR/NAME.txt, .json, .srt or .vtt for each input NAME.* (DIR is created "
                                 "if missing) instead of printing")
    transcribe.add_argument("--model", help="overrides MODEL: a Hugging Face id or a .nemo file")
    transcribe.add_argument("--language", help="overrides LANGUAGE: the language reported")
    args = parser.parse_args(argv)

    # stdout carries the transcripts: NeMo, which logs INFO to stdout, is told to log to stderr (it reads
    # this when it is first imported, which is later).
    os.environ.setdefault("NEMO_REDIRECT_LOGS_TO_STDERR", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # Flags override the environment, validated as the environment is (an empty flag means unset, as there).
    overrides = {name: value for name, value in (("MODEL", getattr(args, "model", None)),
                                                  ("LANGUAGE", getattr(args, "language", None))) if value}
    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    if args.command == "transcribe" and args.output_dir is not None:
        try:
            args.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: --output-dir {args.output_dir}: {(error.strerror or str(error)).lower()}", file=sys.stderr)
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
        return transcribe_files(settings, args.files, args.format, args.output_dir)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the files done so far are written; no traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except CannotListen as error:
        print(f"error: {error}", file=sys.stderr)
        return 1  # as uvicorn exits when HTTP_PORT cannot be bound


if __name__ == "__main__":
    sys.exit(main())
