"""nemo-stt's ONNX backend against sherpa-onnx on the same exported model, CTC and transducer, in one run.

    python benchmarks/sherpa_onnx.py --setup       # build/sherpa-venv: sherpa-onnx from PyPI, never a dependency
    python benchmarks/sherpa_onnx.py               # on build/bench-full.nemo (make_benchmark_model.py)
    python benchmarks/sherpa_onnx.py --threads 2 --rounds 3 --modes ctc

1. The model: the benchmark model with its transducer joint edited so that greedy decoding emits about
   0.5 tokens per encoder frame (a random joint emits max_symbols on every frame; see `set_emission_rate`),
   saved as build/sherpa/bench-emitting.nemo; both sides use it.
2. sherpa-onnx's files, made by NeMo's own export in the layout of sherpa-onnx's NeMo recipes: for CTC, the
   hybrid's CTC branch as one model.onnx (encoder + CTC head, log-probs out) with its metadata, and
   tokens.txt; for the transducer, encoder.onnx (with the metadata), decoder.onnx, joiner.onnx.
3. For each thread count and each decoder, three processes, each loaded once: sherpa-onnx's
   OfflineRecognizer (in build/sherpa-venv), nemo-stt's Engine with backend onnx, and with backend torch
   (the service's allocator, VAD off, full attention). Rounds in alternation: each process transcribes the
   24 short files one at a time (batch 1), then the 60-s file; RTFx = audio seconds / wall seconds of the
   transcription calls, timed inside each process. Medians over rounds, and the median of each round's ratio.
4. RSS of each process once loaded and after the rounds; token agreement with sherpa-onnx's greedy output.

Features: nemo-stt computes NeMo's preprocessor (the model's normalisation, `normalize` in its config);
sherpa-onnx computes its own fbank with the normalisation named in the metadata (`normalize_type`, empty
for none). Token agreement therefore compares two feature front ends as well as two runtimes; with the
edited joint a frame emits nothing or max_symbols tokens, so a small feature difference that flips a frame
changes ten tokens, and the two sides' transducer decodings may do different amounts of work (the totals
are printed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "build" / "sherpa"
VENV = REPO / "build" / "sherpa-venv"
SAMPLE_RATE = 16000
EMISSION_RATE = 0.5


def setup() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "sherpa-onnx", "numpy", "soundfile"], check=True)
    subprocess.run([*pip, "list"], check=True)


# ---------------------------------------------------------------- model and files (nemo-stt's environment)

def prepare_model(source: Path) -> Path:
    """The benchmark model with a joint that emits about EMISSION_RATE tokens per frame, saved once."""
    target = WORK / "bench-emitting.nemo"
    if target.exists():
        return target
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(source), map_location="cpu")
    model.eval()
    model.change_decoding_strategy(decoder_type="rnnt", verbose=False)
    reached = set_emission_rate(model, EMISSION_RATE)
    print(f"joint edited: greedy RNNT decoding emits {reached:.2f} tokens per encoder frame", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    model.save_to(str(target))
    return target


def set_emission_rate(model, rate: float) -> float:
    """Edit the joint's weights (not its sizes, so not its cost) so that greedy decoding emits about `rate`.

    A blank bias alone does not do it here: the random joint's blank margin hardly varies from frame to
    frame and falls after each emission, so greedy decoding emits either nothing or max_symbols on every
    frame (make_replicas.py's bisection lands on 0). With the prediction network's input to the joint
    zeroed, the margin depends on the frame only, and a frame emits nothing or max_symbols; the blank
    row is scaled so that the margin spreads over frames, and the bias set at the quantile that makes
    rate / max_symbols of the frames emit.
    """
    import torch

    sys.path.insert(0, str(REPO / "tools" / "demo_model"))
    from sentences import make_corpus
    from synthesize import speak

    sentences = iter(make_corpus(40, seed=3))
    audio = np.zeros(0, dtype=np.float32)
    while len(audio) < 8 * SAMPLE_RATE:
        audio = np.concatenate([audio, speak(next(sentences)), np.zeros(3200, np.float32)])
    joint = model.joint
    output = joint.joint_net[-1]
    blank = joint.num_classes_with_blank - 1
    max_symbols = int(model.cfg.decoding.greedy.get("max_symbols", 10))
    with torch.inference_mode():
        joint.pred.weight.zero_()
        joint.pred.bias.zero_()
        output.weight[blank] *= 100.0
        signal = torch.from_numpy(audio).unsqueeze(0)
        encoded, lengths = model.forward(input_signal=signal, input_signal_length=torch.tensor([signal.shape[1]]))
        logits = joint.joint_after_projection(joint.project_encoder(encoded.transpose(1, 2)),
                                              joint.project_prednet(torch.zeros(1, 1, joint.pred_hidden)))
        logits = logits[0, :, 0, :]
        margin = logits[:, blank] - logits[:, :blank].max(-1).values
        output.bias[blank] -= torch.quantile(margin, rate / max_symbols)
        hypothesis = model.decoding.rnnt_decoder_predictions_tensor(encoded, lengths)[0]
    return len(hypothesis.y_sequence) / int(lengths[0])


def _metadata(path: Path, values: dict) -> None:
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(graph, str(path))


def export_for_sherpa(model_path: Path) -> dict[str, Path]:
    """sherpa-onnx's folders for the CTC branch and the transducer branch of the model."""
    folders = {"ctc": WORK / "sherpa-ctc", "transducer": WORK / "sherpa-transducer"}
    if all((folder / "tokens.txt").exists() for folder in folders.values()):
        return folders
    import torch
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(model_path), map_location="cpu")
    model.eval()
    normalize = model.cfg.preprocessor.normalize
    common = {"vocab_size": model.tokenizer.vocab_size + 1,  # with the blank
              "normalize_type": "" if normalize in (None, "NA") else normalize,
              "subsampling_factor": model.cfg.encoder.subsampling_factor, "version": "1", "model_author": "NeMo"}
    tokens = "".join(f"{piece} {i}\n" for i, piece in enumerate(model.joint.vocabulary))
    tokens += f"<blk> {len(model.joint.vocabulary)}\n"
    with torch.inference_mode(False), torch.no_grad():
        folder = folders["ctc"]
        folder.mkdir(parents=True, exist_ok=True)
        model.change_decoding_strategy(decoder_type="ctc", verbose=False)
        model.set_export_config({"decoder_type": "ctc"})
        model.export(str(folder / "model.onnx"))
        _metadata(folder / "model.onnx", {**common, "model_type": "EncDecCTCModelBPE",
                                          "comment": "the CTC branch of a hybrid"})
        (folder / "tokens.txt").write_text(tokens)

        folder = folders["transducer"]
        folder.mkdir(parents=True, exist_ok=True)
        model.change_decoding_strategy(decoder_type="rnnt", verbose=False)
        model.set_export_config({"decoder_type": "rnnt"})
        model.encoder.export(str(folder / "encoder.onnx"))
        model.decoder.export(str(folder / "decoder.onnx"))
        model.joint.export(str(folder / "joiner.onnx"))
        # Here without the blank: sherpa-onnx adds it for the joiner's output.
        _metadata(folder / "encoder.onnx", {**common, "vocab_size": model.decoder.vocab_size,
                                            "model_type": "EncDecHybridRNNTCTCBPEModel",
                                            "pred_rnn_layers": model.decoder.pred_rnn_layers,
                                            "pred_hidden": model.decoder.pred_hidden,
                                            "comment": "the transducer branch of a hybrid"})
        (folder / "tokens.txt").write_text(tokens)
    print(f"exported for sherpa-onnx: {folders['ctc']}, {folders['transducer']} (normalize_type "
          f"{common['normalize_type']!r}, model's preprocessor normalize {normalize!r})", flush=True)
    return folders


def make_audio(count: int, long_seconds: float) -> tuple[list[Path], Path]:
    """`count` espeak sentences of 3 to 6 s and one file of sentences with pauses, as float32 .npy files."""
    folder = WORK / "audio"
    short = [folder / f"short-{i:02d}.npy" for i in range(count)]
    long = folder / f"long-{long_seconds:g}.npy"
    if all(p.exists() for p in short) and long.exists():
        return short, long
    sys.path.insert(0, str(REPO / "tools" / "demo_model"))
    from sentences import make_corpus
    from synthesize import speak

    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for sentence in make_corpus(20 * count, seed=11):
        audio = speak(sentence)
        if 3 * SAMPLE_RATE <= len(audio) <= 6 * SAMPLE_RATE:
            np.save(short[made], audio)
            made += 1
            if made == count:
                break
    if made < count:
        raise SystemExit(f"only {made} sentences of 3 to 6 s")
    pieces, total = [], 0
    for sentence in make_corpus(200, seed=60):
        pieces.append(np.concatenate([speak(sentence), np.zeros(SAMPLE_RATE // 3, np.float32)]))
        total += len(pieces[-1])
        if total >= long_seconds * SAMPLE_RATE:
            break
    np.save(long, np.concatenate(pieces)[: int(long_seconds * SAMPLE_RATE)])
    return short, long


# ---------------------------------------------------------------- the workers

def _serve(transcribe, tokens, audios: dict[str, np.ndarray]) -> None:
    """Answer commands on stdin: `run NAME...` times transcribing each in turn, `tokens NAME...` gives tokens."""
    print("loaded", flush=True)
    for line in sys.stdin:
        command, *names = line.split()
        if command == "run":
            started = time.perf_counter()
            for name in names:
                transcribe(audios[name])
            print("done " + json.dumps(time.perf_counter() - started), flush=True)
        elif command == "tokens":
            print("done " + json.dumps([tokens(audios[name]) for name in names]), flush=True)


def _load_audio(spec: dict) -> dict[str, np.ndarray]:
    return {Path(p).name: np.load(p) for p in spec["files"]}


def sherpa_worker(spec: dict) -> None:
    # This file's folder is first on the path, and this file is named as the package.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    import sherpa_onnx

    folder = Path(spec["folder"])
    if spec["mode"] == "ctc":
        recognizer = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
            model=str(folder / "model.onnx"), tokens=str(folder / "tokens.txt"), num_threads=spec["threads"])
    else:
        recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=str(folder / "encoder.onnx"), decoder=str(folder / "decoder.onnx"),
            joiner=str(folder / "joiner.onnx"), tokens=str(folder / "tokens.txt"), num_threads=spec["threads"],
            model_type="nemo_transducer")
    ids = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in
           (folder / "tokens.txt").read_text().splitlines()}

    def transcribe(audio):
        stream = recognizer.create_stream()
        stream.accept_waveform(SAMPLE_RATE, audio)
        recognizer.decode_stream(stream)
        return stream.result

    def tokens(audio):
        # The result writes SentencePiece's word mark as a space.
        return [ids[piece.replace(" ", "\u2581")] for piece in transcribe(audio).tokens]

    _serve(transcribe, tokens, _load_audio(spec))


def nemo_worker(spec: dict) -> None:
    import torch

    from nemo_stt.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(
        model=spec["model"], device="cpu", num_threads=spec["threads"], backend=spec["backend"],
        onnx_quantize="none", onnx_cache_dir=str(WORK / "onnx-cache"), local_attention="off",
        architecture="hybrid_bpe_ctc" if spec["mode"] == "ctc" else "hybrid_bpe_rnnt"))
    transcriber = engine.transcriber
    model = transcriber.model

    def transcribe(audio):
        return transcriber.transcribe_batch([audio])

    @torch.inference_mode()
    def tokens(audio):
        # The same steps as the transcriber's, stopped at the token ids.
        signal = torch.from_numpy(audio).unsqueeze(0)
        features, lengths = model.preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
        encoder = transcriber.encoder or (lambda f, n: model.encoder(audio_signal=f, length=n))
        encoded, encoded_lengths = encoder(features, lengths)
        if spec["mode"] == "ctc":
            best = model.ctc_decoder(encoder_output=encoded)[0, : int(encoded_lengths[0])].argmax(-1).tolist()
            blank = model.ctc_decoder.num_classes_with_blank - 1
            return [t for i, t in enumerate(best) if t != blank and (i == 0 or best[i - 1] != t)]
        hypothesis = model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=encoded, encoded_lengths=encoded_lengths, return_hypotheses=True)[0]
        return [int(t) for t in hypothesis.y_sequence]

    _serve(transcribe, tokens, _load_audio(spec))


# ---------------------------------------------------------------- the driver

def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Worker:
    def __init__(self, label: str, python: str, spec: dict, env: dict):
        self.label = label
        started = time.perf_counter()
        log = WORK / "logs" / f"{label.replace(' ', '-')}-{spec['mode']}-{spec['threads']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as stderr:
            self.process = subprocess.Popen([python, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        self._answer("loaded")
        self.load_seconds = time.perf_counter() - started
        self.loaded_memory = memory_mb(self.process.pid)

    def _answer(self, tag: str) -> str:
        while line := self.process.stdout.readline():
            if line.startswith(tag):
                return line[len(tag):].strip()
        raise RuntimeError(f"{self.label} ended with {self.process.wait()}")

    def ask(self, command: str, names: list[str]):
        self.process.stdin.write(f"{command} {' '.join(names)}\n")
        self.process.stdin.flush()
        return json.loads(self._answer("done "))

    def close(self) -> tuple[float, float]:
        memory = memory_mb(self.process.pid)
        self.process.stdin.close()
        self.process.wait(timeout=60)
        return memory


def _distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def agreement(reference: list[list[int]], other: list[list[int]]) -> str:
    same = sum(a == b for a, b in zip(reference, other, strict=True))
    errors = sum(_distance(a, b) for a, b in zip(reference, other, strict=True))
    total = sum(len(a) for a in reference)
    return (f"{same}/{len(reference)} files identical, token edit distance {errors}/{total} "
            f"({100 * (1 - errors / max(total, 1)):.1f}% agreement)")


def run_phase(threads: int, mode: str, model: Path, folders: dict, short: list[Path], long: Path,
              rounds: int) -> dict:
    files = [str(p) for p in [*short, long]]
    short_names, long_names = [p.name for p in short], [long.name]
    short_seconds = sum(len(np.load(p)) for p in short) / SAMPLE_RATE
    long_seconds = len(np.load(long)) / SAMPLE_RATE
    nemo_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NEMO_REDIRECT_LOGS_TO_STDERR": "1"}
    import ctypes.util

    from nemo_stt.allocator import JEMALLOC_CONF

    jemalloc = ctypes.util.find_library("jemalloc")
    if jemalloc:  # the allocator `nemo-stt serve` runs on
        nemo_env.update(LD_PRELOAD=jemalloc, MALLOC_CONF=JEMALLOC_CONF)
    sherpa_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_PRELOAD")}
    print(f"\n== {mode}, {threads} thread(s): loading", flush=True)
    workers = {
        "sherpa-onnx": Worker("sherpa-onnx", str(VENV / "bin" / "python"),
                              {"side": "sherpa", "mode": mode, "threads": threads, "folder": str(folders[mode]),
                               "files": files}, sherpa_env),
        "nemo-stt onnx": Worker("nemo-stt onnx", sys.executable,
                                {"side": "nemo", "backend": "onnx", "mode": mode, "threads": threads,
                                 "model": str(model), "files": files}, nemo_env),
        "nemo-stt torch": Worker("nemo-stt torch", sys.executable,
                                 {"side": "nemo", "backend": "torch", "mode": mode, "threads": threads,
                                  "model": str(model), "files": files}, nemo_env),
    }
    for worker in workers.values():  # warm-up, untimed: first runs allocate and plan
        worker.ask("run", short_names[:3] + long_names)
    rtfx = {label: {"short": [], "long": []} for label in workers}
    for index in range(rounds):
        for label, worker in workers.items():
            rtfx[label]["short"].append(short_seconds / worker.ask("run", short_names))
            rtfx[label]["long"].append(long_seconds / worker.ask("run", long_names))
        print(f"  round {index + 1}: " + ", ".join(
            f"{label} {rtfx[label]['short'][-1]:.1f} / {rtfx[label]['long'][-1]:.1f}" for label in workers),
            flush=True)
    tokens = {label: worker.ask("tokens", short_names + long_names) for label, worker in workers.items()}
    memory = {label: (worker.loaded_memory, worker.close()) for label, worker in workers.items()}
    result = {"threads": threads, "mode": mode, "short_seconds": short_seconds, "long_seconds": long_seconds,
              "rtfx": rtfx, "memory": memory, "tokens": tokens,
              "load": {label: worker.load_seconds for label, worker in workers.items()}}
    report(result)
    return result


def report(r: dict) -> None:
    rtfx = r["rtfx"]
    print(f"-- {r['mode']}, {r['threads']} thread(s): {len(rtfx['sherpa-onnx']['short'])} rounds, "
          f"{len(r['tokens']['sherpa-onnx']) - 1} short files ({r['short_seconds']:.1f} s) one at a time, "
          f"one {r['long_seconds']:.0f}-s file")
    for part, name in (("short", "short files"), ("long", "long file")):
        print(f"   RTFx, {name}: " + ", ".join(
            f"{label} {statistics.median(values[part]):.1f}" for label, values in rtfx.items()))
        for label in ("nemo-stt onnx", "nemo-stt torch"):
            ratios = [a / b for a, b in zip(rtfx[label][part], rtfx["sherpa-onnx"][part], strict=True)]
            print(f"      {label} / sherpa-onnx: median of rounds' ratios {statistics.median(ratios):.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    for label, ((rss, _), (rss_end, peak)) in r["memory"].items():
        print(f"   {label}: loaded in {r['load'][label]:.1f} s, RSS {rss:.0f} MB once loaded, "
              f"{rss_end:.0f} MB after the rounds (peak {peak:.0f} MB)")
    reference = r["tokens"]["sherpa-onnx"]
    for label in ("nemo-stt onnx", "nemo-stt torch"):
        print(f"   tokens, {label} vs sherpa-onnx: {agreement(reference, r['tokens'][label])}")
    print("   tokens, nemo-stt onnx vs torch: "
          f"{agreement(r['tokens']['nemo-stt torch'], r['tokens']['nemo-stt onnx'])}")
    frames = (r["short_seconds"] + r["long_seconds"]) * 100 / 8
    print(f"   tokens emitted in all (about {frames:.0f} encoder frames): " + ", ".join(
        f"{label} {sum(len(t) for t in tokens)}" for label, tokens in r["tokens"].items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help=f"create {VENV.relative_to(REPO)} with sherpa-onnx")
    parser.add_argument("--model", type=Path, default=REPO / "build" / "bench-full.nemo")
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--modes", default="ctc,transducer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        (sherpa_worker if spec["side"] == "sherpa" else nemo_worker)(spec)
        return
    if args.setup:
        setup()
        return
    os.environ["NEMO_REDIRECT_LOGS_TO_STDERR"] = "1"
    if not (VENV / "bin" / "python").exists():
        raise SystemExit(f"no {VENV}: run `python {Path(__file__).relative_to(REPO)} --setup` first")
    version = subprocess.run([str(VENV / "bin" / "python"), "-c", "import sherpa_onnx; print(sherpa_onnx.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()
    import nemo
    import onnxruntime
    import torch

    print(f"sherpa-onnx {version}; nemo-stt on NeMo {nemo.__version__}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {os.cpu_count()} CPUs", flush=True)
    model = prepare_model(args.model)
    folders = export_for_sherpa(model)
    short, long = make_audio(args.files, args.long_seconds)
    for threads in (int(t) for t in args.threads.split(",")):
        for mode in args.modes.split(","):
            run_phase(threads, mode, model, folders, short, long, args.rounds)


if __name__ == "__main__":
    main()
