"""The demo model's held-out set: the sentences and speech that `train.py` measures its WER on.

Shared by `train.py` and the benchmarks, so that a figure measured later is on the very utterances
the published one (the model's `metrics.json`) was measured on.
"""

import numpy as np
from sentences import make_corpus
from synthesize import speak_corpus

SEED = 7
"""`train.py`'s default seed, the one the embedded demo model was trained with."""
OFFSET = 1000
"""Held-out texts and voices come from the seed plus this, training ones from the seed itself."""


def held_out_texts(count: int = 300, seed: int = SEED) -> list[str]:
    """The held-out sentences; the first `count` of a longer set are the same sentences."""
    return make_corpus(count, seed=seed + OFFSET)


def speak_held_out(texts: list[str], seed: int = SEED, variants: bool = True) -> list[np.ndarray]:
    """The held-out sentences spoken (the embedded model was trained with `--voice-variants`)."""
    audios, _ = speak_corpus(texts, seed=seed + OFFSET, variants=variants)
    return audios


def held_out_set(count: int = 300, seed: int = SEED, variants: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """The audio and texts of the first `count` held-out utterances."""
    texts = held_out_texts(count, seed)
    return speak_held_out(texts, seed, variants), texts
