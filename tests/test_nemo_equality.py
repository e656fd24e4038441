"""The engine gives what NeMo's own `transcribe()` gives, for the demo model and for small replicas of
each model family."""

import json

from nemo_stt.audio import decode_audio
from nemo_stt.engine import demo_model_path

from .conftest import FIXTURES

FILES = ["anna_bread.wav", "pilot_train.wav", "old_house.flac"]


def test_the_demo_model_transcribes_with_nemos_own_api_as_the_engine_does(demo_engine):
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(demo_model_path()), map_location="cpu")
    paths = [str(FIXTURES / name) for name in FILES]
    nemo_texts = [hypothesis.text for hypothesis in model.transcribe(paths, verbose=False, return_hypotheses=True)]
    engine_texts = [demo_engine.transcribe(decode_audio(FIXTURES / name, 16000)).text for name in FILES]
    assert nemo_texts == engine_texts
    known = json.loads((FIXTURES / "texts.json").read_text())
    assert nemo_texts[0] == known[FILES[0]]["text"]
