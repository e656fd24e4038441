"""The engine's restore of a `.nemo` file (no random init, mapped checkpoint) gives NeMo's own model."""

import pytest
import torch
from nemo.collections.asr.models import ASRModel

from nemo_stt.engine.model_loading import ModelLoadError, load_asr_model

from . import tiny_models


def tiny(tmp_path, kind: str):
    return tiny_models.build(kind, tiny_models.train_tokenizer(tmp_path / "tokenizer"), tmp_path / f"{kind}.nemo")


def test_loaded_weights_equal_nemos_own_restore(tmp_path):
    path = tiny(tmp_path, "hybrid")
    ours = load_asr_model(str(path), torch.device("cpu")).state_dict()
    nemo = ASRModel.restore_from(str(path), map_location="cpu").state_dict()
    assert ours.keys() == nemo.keys()
    different = [name for name in ours if not torch.equal(ours[name], nemo[name])]
    assert not different


def test_random_initialisers_work_again_after_loading_and_after_a_failed_load(tmp_path):
    load_asr_model(str(tiny(tmp_path, "ctc")), torch.device("cpu"))
    broken = tmp_path / "broken.nemo"
    broken.write_bytes(b"not a tar archive")
    with pytest.raises(ModelLoadError):
        load_asr_model(str(broken), torch.device("cpu"))
    layer = torch.nn.Linear(64, 64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.kaiming_uniform_(layer.weight)
    assert layer.weight.abs().sum() > 0
