"""Case and punctuation restoration with recasepunc checkpoints (version 0.4 and later).

A checkpoint is a `torch.save` dict: `model_state_dict` (a Hugging Face encoder under `bert.` and two
linear heads, `punc` and `case`, on `dropout(gelu(last_hidden_state))`) and `config` (`lang`, `flavor`:
the backbone's Hugging Face id, `max_length`, the special token ids). Only the backbone's configuration
and tokenizer are read from `flavor`: its weights are in the checkpoint.

Labels are per token: a word takes the case of its first token and the punctuation of its last.
Text is cut into windows of at most `max_length` tokens (with the classifier and separator tokens),
between words; the windows of all waiting requests go through one forward.
"""

import logging
import os
import pickle
import queue
import threading
from concurrent.futures import Future
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from ..results import Transcript, Word
from .model_loading import ModelLoadError

log = logging.getLogger(__name__)

PUNCTUATION = ("O", "COMMA", "PERIOD", "QUESTION", "EXCLAMATION")
PUNCTUATION_MARKS = ("", ",", ".", "?", "!")
CASES = ("LOWER", "UPPER", "CAPITALIZE", "OTHER")

DEMO_NAME = "demo"
DEMO_DIR = "demo-en-punctuation"
DEMO_FILE = "demo-en.recasepunc"

# Windows of all waiting requests share a forward up to this many windows.
MAX_BATCH_WINDOWS = 32


def demo_punctuation_path() -> Path:
    return Path(str(resources.files("nemo_stt") / "assets" / DEMO_DIR / DEMO_FILE))


def resolve_punctuation_path(setting: str) -> Path:
    """The checkpoint that PUNCTUATION_MODEL names: `demo` is the embedded demo model."""
    path = demo_punctuation_path() if setting == DEMO_NAME else Path(setting)
    if not path.is_file():
        raise ModelLoadError(f"PUNCTUATION_MODEL={setting}: no such file")
    return path


class _Namespace:
    """Stands for classes of the training code that a checkpoint's pickle names (recasepunc's `Config`)."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Namespace


class _PickleModule:
    """`pickle` with classes that cannot be imported read as plain attribute holders."""

    Unpickler = _Unpickler
    load = staticmethod(pickle.load)


def _config_value(config, key, default=None):
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def backbone_dir(flavor: str, checkpoint: Path) -> Path:
    """Where the backbone's configuration and tokenizer are: a folder beside the checkpoint, a path, or the
    Hugging Face cache (never downloaded)."""
    beside = checkpoint.parent / flavor
    if beside.is_dir():
        return beside
    if Path(flavor).is_dir():
        return Path(flavor)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(flavor, local_files_only=True))
    except Exception:
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelLoadError(
            f"PUNCTUATION_MODEL={checkpoint}: its backbone {flavor!r} is not in the Hugging Face cache ({home}); "
            f"download it where there is a network (huggingface-cli download {flavor}) and mount that cache, "
            "with HF_HOME pointing to it") from None


class RecasePunc(torch.nn.Module):
    """recasepunc's network: the backbone and two heads (the names of the checkpoint's keys)."""

    def __init__(self, backbone_config):
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_config(backbone_config)
        size = backbone_config.hidden_size
        self.punc = torch.nn.Linear(size, len(PUNCTUATION))
        self.case = torch.nn.Linear(size, len(CASES))
        self.dropout = torch.nn.Dropout(0.3)

    def forward(self, ids, mask):
        hidden = self.dropout(torch.nn.functional.gelu(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state))
        return self.punc(hidden), self.case(hidden)


class Punctuator:
    """A loaded checkpoint: words in, words with case and punctuation out."""

    def __init__(self, path: Path, device: torch.device):
        from transformers import AutoConfig, AutoTokenizer

        # A checkpoint is a pickle, which can run code when read: only the file the operator configured is read.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
        if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "config" not in checkpoint:
            raise ModelLoadError(f"PUNCTUATION_MODEL={path}: not a recasepunc checkpoint (version 0.4 or later)")
        config = checkpoint["config"]
        flavor = _config_value(config, "flavor")
        if not flavor:
            raise ModelLoadError(f"PUNCTUATION_MODEL={path}: its config names no backbone (flavor)")
        folder = backbone_dir(flavor, path)
        self.flavor = flavor
        self.lang = _config_value(config, "lang")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = RecasePunc(AutoConfig.from_pretrained(folder))
        missing, _ = self.model.load_state_dict(checkpoint["model_state_dict"], strict=False)
        missing = [key for key in missing if not key.endswith("position_ids")]
        if missing:
            raise ModelLoadError(f"PUNCTUATION_MODEL={path}: weights missing for {', '.join(missing[:5])}")
        self.model.eval().to(device)
        self.device = device
        self.max_length = int(_config_value(config, "max_length", 256))
        tok = self.tokenizer
        self.cls_id = tok.cls_token_id if tok.cls_token_id is not None else _config_value(config, "cls_token_id")
        self.sep_id = tok.sep_token_id if tok.sep_token_id is not None else _config_value(config, "sep_token_id")
        # The upstream predictor pads with id 0, a real token for some backbones: pad with the pad token, masked.
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def _windows(self, words: list[str]) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
        """Token windows between words: (ids, [(word index, first position, last position)])."""
        room = self.max_length - 2
        windows, ids, spans = [], [], []
        for index, word in enumerate(words):
            pieces = self.tokenizer.encode(word.lower(), add_special_tokens=False)[:room]
            pieces = pieces or [self.tokenizer.unk_token_id]
            if len(ids) + len(pieces) > room:
                windows.append((ids, spans))
                ids, spans = [], []
            spans.append((index, len(ids) + 1, len(ids) + len(pieces)))
            ids = ids + pieces
        if ids:
            windows.append((ids, spans))
        return windows

    @torch.inference_mode()
    def predict(self, texts: list[list[str]]) -> list[list[tuple[int, int]]]:
        """(case, punctuation) label indices per word, for several word lists in one forward."""
        windows = [(t, window) for t, words in enumerate(texts) for window in self._windows(words)]
        labels: list[list[tuple[int, int]]] = [[(0, 0)] * len(words) for words in texts]
        for start in range(0, len(windows), MAX_BATCH_WINDOWS):
            chunk = windows[start:start + MAX_BATCH_WINDOWS]
            width = max(len(ids) for _, (ids, _) in chunk) + 2
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, (tokens, _)) in enumerate(chunk):
                sequence = [self.cls_id, *tokens, self.sep_id]
                ids[row, :len(sequence)] = torch.tensor(sequence)
                mask[row, :len(sequence)] = 1
            punc, case = self.model(ids.to(self.device), mask.to(self.device))
            punc, case = punc.argmax(-1).cpu().tolist(), case.argmax(-1).cpu().tolist()
            for row, (t, (_, spans)) in enumerate(chunk):
                for index, first, last in spans:
                    labels[t][index] = (case[row][first], punc[row][last])
        return labels


def apply_labels(words: list[str], labels: list[tuple[int, int]]) -> list[str]:
    out = []
    for word, (case, punc) in zip(words, labels, strict=True):
        name = CASES[case]
        if name == "LOWER":
            word = word.lower()
        elif name == "UPPER":
            word = word.upper()
        elif name == "CAPITALIZE":
            word = word[:1].upper() + word[1:].lower()
        out.append(word + PUNCTUATION_MARKS[punc])
    return out


def punctuated_words(words: tuple[Word, ...], texts: list[str]) -> tuple[Word, ...]:
    """The words with new texts; times and confidences as they were."""
    return tuple(replace(word, word=text) for word, text in zip(words, texts, strict=True))


def punctuated_transcript(transcript: Transcript, texts: list[str]) -> Transcript:
    words = punctuated_words(transcript.words, texts)
    return replace(transcript, words=words, text=" ".join(texts))


def writes_punctuation(vocabulary) -> bool:
    """Whether an ASR model's tokens hold capitals and punctuation (parakeet v2/v3, `_pc` models)."""
    pieces = list(vocabulary)
    return any(any(c.isupper() for c in piece) for piece in pieces) and any(
        any(c in ".,?!" for c in piece) for piece in pieces)


class PunctuationBatcher:
    """One thread running the punctuator: the requests waiting when it is free go through one forward."""

    def __init__(self, punctuator: Punctuator):
        self.punctuator = punctuator
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="punctuation", daemon=True)
        self._thread.start()

    def submit(self, words: list[str]) -> Future:
        """A future of the words recased and punctuated."""
        future: Future = Future()
        if not words:
            future.set_result([])
        else:
            self._queue.put((words, future))
        return future

    def punctuate(self, words: list[str]) -> list[str]:
        return self.submit(words).result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH_WINDOWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            batch = [(words, future) for words, future in batch if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                labels = self.punctuator.predict([words for words, _ in batch])
            except BaseException as error:
                log.exception("punctuation failed")
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (words, future), word_labels in zip(batch, labels, strict=True):
                future.set_result(apply_labels(words, word_labels))
