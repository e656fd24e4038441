"""Case and punctuation restoration: recasepunc checkpoints, the demo model, and every front end."""

import asyncio
import shutil
import subprocess
import sys
import time
import types
import uuid

import httpx
import pytest
import torch
from celery import Celery

from nemo_stt.engine.model_loading import ModelLoadError
from nemo_stt.engine.punctuation import (
    CASES,
    PUNCTUATION,
    Punctuator,
    RecasePunc,
    _PickleModule,
    apply_labels,
    demo_punctuation_path,
    punctuated_transcript,
    writes_punctuation,
)
from nemo_stt.results import Transcript, Word

from .conftest import FIXTURES, free_port, module_server

WORDS = ["anna", "bought", "the", "bread", "at", "the", "market", "stop", "anna", "unknownish", "stop"]


@pytest.fixture(scope="module")
def upstream_checkpoint(tmp_path_factory):
    """A checkpoint as recasepunc saves one: random weights, a tiny BERT, the config an object of its module."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path_factory.mktemp("recasepunc")
    backbone = folder / "tiny-bert"
    backbone.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anna", "bought", "the", "bread", "at", "market", "stop",
             "un", "##known", "##ish"]
    (backbone / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(backbone / "vocab.txt")).save_pretrained(backbone)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    config.save_pretrained(backbone)
    torch.manual_seed(0)
    model = RecasePunc(config)
    # recasepunc pickles its own Config class: the server must read it without the recasepunc module.
    module = types.ModuleType("recasepunc")

    class Config:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    Config.__module__, Config.__qualname__ = "recasepunc", "Config"
    module.Config = Config
    sys.modules["recasepunc"] = module
    try:
        path = folder / "en.test"
        torch.save({"iteration": 1, "model_state_dict": model.state_dict(),
                    "config": Config(lang="en", flavor=str(backbone), max_length=8, cls_token_id=2, sep_token_id=3,
                                     pad_token_id=0)}, path)
    finally:
        del sys.modules["recasepunc"]
    return path


def test_an_upstream_checkpoint_loads_and_labels_every_word(upstream_checkpoint):
    punctuator = Punctuator(upstream_checkpoint, torch.device("cpu"))
    assert punctuator.max_length == 8 and punctuator.lang == "en"
    labels = punctuator.predict([WORDS])[0]
    assert len(labels) == len(WORDS)
    assert all(0 <= case < len(CASES) and 0 <= punc < len(PUNCTUATION) for case, punc in labels)


def test_padding_is_masked_so_a_text_gets_the_same_labels_alone_and_in_a_batch(upstream_checkpoint):
    punctuator = Punctuator(upstream_checkpoint, torch.device("cpu"))
    short = ["anna", "bought"]
    assert punctuator.predict([short, WORDS])[0] == punctuator.predict([short])[0]


def test_labels_land_on_their_words_across_windows(upstream_checkpoint):
    """Case from a word's first token, punctuation from its last, windows of max_length tokens (8 here)."""
    punctuator = Punctuator(upstream_checkpoint, torch.device("cpu"))
    vocab = punctuator.tokenizer.get_vocab()

    def by_token(ids, mask):
        # PERIOD on "stop" and "##ish", CAPITALIZE on "anna" and "un": the labels follow the tokens.
        punc = torch.zeros((*ids.shape, len(PUNCTUATION)))
        case = torch.zeros((*ids.shape, len(CASES)))
        punc[..., 0] = 1
        case[..., 0] = 1
        for name in ("stop", "##ish"):
            punc[ids == vocab[name]] = torch.eye(len(PUNCTUATION))[2]
        for name in ("anna", "un"):
            case[ids == vocab[name]] = torch.eye(len(CASES))[2]
        assert ids.shape[1] <= punctuator.max_length
        return punc, case

    punctuator.model.forward = by_token
    words = WORDS * 3  # 39 tokens: five or more windows
    texts = apply_labels(words, punctuator.predict([words])[0])
    assert texts == ["Anna", "bought", "the", "bread", "at", "the", "market", "stop.", "Anna", "Unknownish.",
                     "stop."] * 3


def test_a_missing_backbone_stops_with_one_line_naming_it_and_hf_home(tmp_path, upstream_checkpoint):
    checkpoint = torch.load(upstream_checkpoint, weights_only=False, pickle_module=_PickleModule)
    checkpoint["config"] = {"lang": "fr", "flavor": "example-org/absent-backbone", "max_length": 256}
    path = tmp_path / "fr.test"
    torch.save(checkpoint, path)
    with pytest.raises(ModelLoadError) as error:
        Punctuator(path, torch.device("cpu"))
    message = str(error.value)
    assert "example-org/absent-backbone" in message and "HF_HOME" in message and "\n" not in message


def test_the_demo_model_punctuates_a_demo_sentence():
    punctuator = Punctuator(demo_punctuation_path(), torch.device("cpu"))
    words = "anna bought the bread at the market".split()
    assert apply_labels(words, punctuator.predict([words])[0]) == "Anna bought the bread at the market.".split()
    words = "where did the old teacher buy".split()
    assert apply_labels(words, punctuator.predict([words])[0])[-1].endswith("?")


def test_punctuation_changes_texts_and_keeps_times_and_confidences():
    words = (Word("anna", 0.1, 0.4, 0.9), Word("left", 0.5, 0.8, 0.8))
    out = punctuated_transcript(Transcript(text="anna left", words=words, language="en", duration=1.0),
                                ["Anna", "left."])
    assert out.text == "Anna left."
    assert [(w.start, w.end, w.conf) for w in out.words] == [(w.start, w.end, w.conf) for w in words]
    assert out.language == "en" and out.duration == 1.0


def test_models_that_write_punctuation_are_recognised():
    assert writes_punctuation(["▁The", "▁cat", ".", ","])
    assert not writes_punctuation(["▁the", "▁cat", "'"])


PUNCTUATED = "Anna bought the bread at the market."


punctuating_server = module_server({"PUNCTUATION_MODEL": "demo", "VAD": "false", "NUM_THREADS": "2"})


def test_http_and_openai_answers_are_punctuated(punctuating_server):
    with open(FIXTURES / "anna_bread.wav", "rb") as file:
        audio = file.read()
    answer = httpx.post(f"{punctuating_server.url}/transcribe", files={"file": ("a.wav", audio)}, timeout=60).json()
    assert answer["text"] == PUNCTUATED
    assert [w["word"] for w in answer["words"]] == PUNCTUATED.split()
    assert all(w["end"] > w["start"] for w in answer["words"])
    openai = httpx.post(f"{punctuating_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                        data={"model": "demo-en-fastconformer"}, timeout=60).json()
    assert openai["text"] == PUNCTUATED


def test_a_task_result_is_punctuated(tmp_path):
    from .test_task_mode import Worker

    shutil.copy(FIXTURES / "anna_bread.wav", tmp_path / "anna_bread.wav")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                break
            time.sleep(0.1)
        broker = f"redis://127.0.0.1:{port}"
        queue = f"stt-punct-{uuid.uuid4().hex[:8]}"
        worker = Worker(broker, queue, tmp_path, PUNCTUATION_MODEL="demo", CONCURRENCY="0")
        worker.wait_ready()
        client = Celery("client", broker=broker, backend=f"{broker}/1")
        result = client.send_task("transcribe_task", queue=queue, args=["anna_bread.wav", True]).get(timeout=60)
        assert result["text"] == PUNCTUATED
        assert [w["word"] for w in result["words"]] == PUNCTUATED.split()
    finally:
        if worker is not None:
            worker.stop()
        redis.terminate()
        redis.wait(10)


def test_streaming_finals_are_punctuated():
    from nemo_stt.audio import decode_audio

    from .test_websocket import StreamingServerProcess, stream

    server = StreamingServerProcess(PUNCTUATION_MODEL="demo", STREAMING_PAUSE_FOR_FINAL="1.0")
    try:
        audio = decode_audio(FIXTURES / "anna_bread.wav", 16000)
        messages = asyncio.run(stream(server.url, audio, 16000, speed=float("inf")))
    finally:
        server.stop()
    finals = [m for m in messages if m.get("text")]
    assert " ".join(m["text"] for m in finals) == PUNCTUATED
    assert [w["word"] for m in finals for w in m["words"]] == PUNCTUATED.split()
    assert all(not any(c in m["partial"] for c in ".,?") for m in messages if "partial" in m)


@pytest.mark.parametrize("force", [False, True])
def test_a_model_that_punctuates_itself_gets_punctuation_only_when_forced(force, caplog):
    from types import SimpleNamespace

    from nemo_stt.engine import Engine, EngineConfig

    engine = Engine.__new__(Engine)  # the start-up rule alone, on a model whose tokens have capitals and marks
    engine.config = EngineConfig(punctuation_model="demo", punctuation_force=force)
    engine.model = SimpleNamespace(tokenizer=SimpleNamespace(vocab=["▁The", "▁cat", ".", ","]))
    engine.device = torch.device("cpu")
    with caplog.at_level("WARNING"):
        batcher = engine._load_punctuation()
    assert "writes punctuation and capitals" in caplog.text
    assert (batcher is not None) == force
    if batcher is not None:
        assert batcher.punctuate("anna bought the bread at the market".split()) == PUNCTUATED.split()
        batcher.close()
