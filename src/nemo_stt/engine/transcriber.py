"""Batched inference: audio arrays in, transcripts with word timestamps and confidences out.

The forward pass is run by hand (preprocessor -> encoder -> decoding) in eval mode under
`torch.inference_mode()`: unlike `model.transcribe()`, this leaves the model untouched, needs no
temporary files and can be called from several threads at once. On a CUDA device, see `gpu`.
"""

import threading
from collections.abc import Callable

import numpy as np
import torch

from ..results import Transcript, Word
from .decoding import DecoderKind
from .gpu import DevicePath
from .transducer_greedy import GreedyTransducer

Encoder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(features, lengths) -> (encoded, encoded lengths): the model's encoder, or an ONNX Runtime session of it."""


class Transcriber:
    def __init__(self, model, decoder: DecoderKind, device_path: DevicePath | None = None,
                 encoder: Encoder | None = None):
        """`encoder`: what runs the encoder (see `onnx_backend`); None: the model's own, in PyTorch."""
        self.model = model
        self.encoder = encoder
        self.decoder = decoder
        self.device = next(model.parameters()).device
        self.device_path = device_path or DevicePath(self.device)
        self.sample_rate = int(model.cfg.preprocessor.sample_rate)
        stride = float(model.cfg.preprocessor.window_stride)
        # Seconds per encoder frame: timestamps from decoding are in encoder frames.
        self.frame_seconds = stride * int(getattr(model.encoder, "subsampling_factor", 1))
        # NeMo's decoding objects keep per-call buffers: serialise decoding, not the encoder.
        self._decode_lock = threading.Lock()
        self._greedy: tuple[object, GreedyTransducer | None] | None = None

    @torch.inference_mode()
    def transcribe_batch(self, audios: list[np.ndarray], in_torch: bool = False) -> list[Transcript]:
        """Transcribe mono float32 arrays at `sample_rate`; each result's times are seconds of its own audio.

        `in_torch`: run the model's own encoder for this batch, whatever this transcriber's `encoder` is."""
        results: list[Transcript | None] = [None] * len(audios)
        live = [i for i, audio in enumerate(audios) if audio.size > 0]
        for i in range(len(audios)):
            if i not in live:
                results[i] = Transcript(text="")
        if live:
            with self.device_path.loop_stream():
                signal, lengths = self._pad([audios[i] for i in live])
                # The loop's stream is synchronised at the end of decoding.
                hypotheses = self._decode(signal, lengths, None if in_torch else self.encoder)
            for index, hypothesis in zip(live, hypotheses, strict=True):
                results[index] = self._to_transcript(hypothesis, len(audios[index]) / self.sample_rate)
        return results  # type: ignore[return-value]

    def _pad(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
        signal = torch.zeros(len(audios), int(lengths.max()), dtype=torch.float32)
        for row, audio in enumerate(audios):
            signal[row, : len(audio)] = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        return self.device_path.to_device(signal), self.device_path.to_device(lengths)

    def _decode(self, signal: torch.Tensor, lengths: torch.Tensor, encoder: Encoder | None = None) -> list:
        """Hypotheses of a padded batch; `encoder`: what runs the encoder (None: the model's own)."""
        model = self.model
        features, feature_lengths = model.preprocessor(input_signal=signal, length=lengths)
        if encoder is not None:
            encoded, encoded_lengths = encoder(features, feature_lengths)
        else:
            with self.device_path.encoder_autocast():
                encoded, encoded_lengths = model.encoder(audio_signal=features, length=feature_lengths)
        encoded = encoded.float()  # the heads and decoding in fp32 (a no-op without autocast)
        with self._decode_lock:
            try:
                if self.decoder == "ctc":
                    ctc_head = getattr(model, "ctc_decoder", None) or model.decoder
                    decoding = getattr(model, "ctc_decoding", None) or model.decoding
                    log_probs = ctc_head(encoder_output=encoded)
                    return decoding.ctc_decoder_predictions_tensor(
                        log_probs, decoder_lengths=encoded_lengths, return_hypotheses=True
                    )
                greedy = self.greedy_transducer()
                if greedy is not None:
                    return greedy.predictions(encoded, encoded_lengths)
                return model.decoding.rnnt_decoder_predictions_tensor(
                    encoder_output=encoded, encoded_lengths=encoded_lengths, return_hypotheses=True
                )
            finally:
                # NeMo's CUDA-graph decoders reuse their buffers from call to call: the next loop's
                # stream may write them only once this decoding has run.
                self.device_path.synchronize()

    def greedy_transducer(self) -> GreedyTransducer | None:
        """The CPU greedy decoder for the model's current RNNT decoding, where it gives NeMo's results."""
        decoding = self.model.decoding
        if self._greedy is None or self._greedy[0] is not decoding:
            self._greedy = (decoding, GreedyTransducer.for_decoding(decoding))
        return self._greedy[1]

    def _to_transcript(self, hypothesis, duration: float) -> Transcript:
        if isinstance(hypothesis, list):  # n-best lists: take the best
            hypothesis = hypothesis[0]
        text = (hypothesis.text or "").strip() if isinstance(hypothesis.text, str) else ""
        stamps = (hypothesis.timestamp or {}).get("word", []) if isinstance(hypothesis.timestamp, dict) else []
        confidences = list(getattr(hypothesis, "word_confidence", None) or [])
        words = []
        for index, stamp in enumerate(stamps):
            start = min(duration, max(0.0, stamp["start_offset"] * self.frame_seconds))
            end = min(duration, max(start, stamp["end_offset"] * self.frame_seconds))
            conf = float(confidences[index]) if index < len(confidences) else 0.0
            words.append(Word(word=stamp["word"], start=float(start), end=float(end), conf=min(1.0, max(0.0, conf))))
        return Transcript(text=text, words=tuple(words))
