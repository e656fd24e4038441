"""Greedy RNNT/TDT decoding on the CPU with the joint in NumPy, one utterance at a time.

NeMo's batched label-looping decoder runs a few dozen PyTorch operations per decoding step, whatever the
batch; on a CPU at small batches that dispatch is most of the cost, and PyTorch's LSTM at one step of one
sequence goes through oneDNN, which takes milliseconds where the arithmetic takes microseconds. This
decoder follows the same algorithm, step for step, in NumPy: the prediction network (an LSTM) runs once
per emitted token, and the joint runs on blocks of frames, so a run of blanks costs one matrix product
instead of a loop of tensor operations. It gives NeMo's hypotheses (tokens, frames, TDT durations, step
confidences from NeMo's confidence method), which NeMo's decoding then turns into text, word timestamps
and word confidences.

Only what it reproduces exactly is taken: greedy label looping, a blank-as-pad LSTM prediction network
(NeMo's `LSTMDropout`, any number of layers, no projection), a joint of the form activation -> [dropout]
-> linear with no adapters and temperature 1, no fusion models or biasing, and no alignments. Anything
else keeps NeMo's decoder.
"""

from dataclasses import dataclass

import numpy as np
import torch


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Through tanh, which saturates where exp(-x) would overflow (and warn) for large negative inputs.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_ACTIVATIONS = {
    torch.nn.ReLU: lambda x: np.maximum(x, 0.0, out=x),
    torch.nn.Tanh: lambda x: np.tanh(x, out=x),
    torch.nn.Sigmoid: _sigmoid,
}

# Frames whose joint outputs are computed together while looking for the next token: a block costs about
# one frame's worth of overhead, and frames past an emission are recomputed with the new prediction.
_BLOCK = 8


@dataclass
class StreamState:
    """Where a stream's decoding stands between chunks."""

    prediction: np.ndarray  # the prediction network's projected output after the last token
    lstm: tuple[np.ndarray, np.ndarray]
    frames: int  # encoder frames decoded so far


class _Prediction:
    """The prediction network's step, with the joint's projection of its output (`project_prednet`)."""

    def __init__(self, decoder, joint):
        lstm = decoder.prediction["dec_rnn"].lstm
        embedding = decoder.prediction["embed"].weight.detach().float().numpy()
        self._layers = []
        for layer in range(lstm.num_layers):
            weights = [getattr(lstm, f"{name}_l{layer}").detach().float().numpy()
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            # Transposed views of PyTorch's weights (BLAS reads them as they are): no copies are kept.
            self._layers.append((weights[0].T, weights[1].T, weights[2] + weights[3]))
        self._hidden = lstm.hidden_size
        self._embedding = embedding
        # The first layer's input gates depend on the label alone: each label's row is computed once, when
        # first emitted (its pages of this table are touched only then), which saves reading that layer's
        # input weights at every step.
        self._first_gates = np.empty((len(embedding), 4 * self._hidden), np.float32)
        self._known = np.zeros(len(embedding), bool)
        self._projection = joint.pred.weight.detach().float().numpy().T
        self._projection_bias = joint.pred.bias.detach().float().numpy()

    @staticmethod
    def supports(decoder, joint) -> bool:
        from nemo.collections.common.parts.rnn import LSTMDropout

        rnn = decoder.prediction["dec_rnn"] if "dec_rnn" in getattr(decoder, "prediction", {}) else None
        if type(rnn) is not LSTMDropout or type(rnn.lstm) is not torch.nn.LSTM:
            return False
        lstm = rnn.lstm
        return (lstm.bias and not lstm.batch_first and not lstm.bidirectional and lstm.proj_size == 0
                and isinstance(decoder.prediction["embed"], torch.nn.Embedding)
                and isinstance(joint.pred, torch.nn.Linear))

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(self._layers), self._hidden)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def step(self, label: int, state: tuple[np.ndarray, np.ndarray]):
        """(projected output, new state) after `label`; PyTorch's gate order: input, forget, cell, output."""
        hidden, cell = state
        hidden, cell = hidden.copy(), cell.copy()
        if not self._known[label]:
            input_weight, _, bias = self._layers[0]
            self._first_gates[label] = self._embedding[label] @ input_weight + bias
            self._known[label] = True
        size = self._hidden
        x = None
        for layer, (input_weight, hidden_weight, bias) in enumerate(self._layers):
            inputs = self._first_gates[label] if layer == 0 else x @ input_weight + bias
            gates = inputs + hidden[layer] @ hidden_weight
            sig = _sigmoid(gates[: 2 * size])
            cell[layer] = sig[size:] * cell[layer] + sig[:size] * np.tanh(gates[2 * size: 3 * size])
            hidden[layer] = np.tanh(cell[layer]) * _sigmoid(gates[3 * size:])
            x = hidden[layer]
        return x @ self._projection + self._projection_bias, (hidden, cell)


class GreedyTransducer:
    def __init__(self, decoding, greedy, computer, activation, weight: np.ndarray, bias: np.ndarray):
        self.decoding = decoding
        self._greedy = greedy
        self._prediction = _Prediction(greedy.decoder, greedy.joint)
        self._computer = computer
        self._activation = activation
        self._weight = weight  # [joint hidden, outputs], for row-vector products
        self._bias = bias
        self._blank = int(greedy._blank_index)
        self._max_symbols = greedy.max_symbols
        durations = getattr(greedy, "durations", None)
        self._durations = None if durations is None else [int(d) for d in durations]

    @classmethod
    def for_decoding(cls, decoding) -> "GreedyTransducer | None":
        """This decoder for NeMo's RNNT decoding object, or None where it would not give NeMo's results."""
        from nemo.collections.asr.parts.submodules.rnnt_greedy_decoding import (
            GreedyBatchedRNNTInfer,
            GreedyBatchedTDTInfer,
        )

        greedy = getattr(decoding, "decoding", None)
        if type(greedy) not in (GreedyBatchedRNNTInfer, GreedyBatchedTDTInfer):
            return None
        computer = getattr(greedy, "decoding_computer", None)
        if computer is None or greedy._greedy_decode != greedy._greedy_decode_blank_as_pad_loop_labels:
            return None
        if computer.has_fusion_models() or computer.preserve_logits or computer.record_all_steps:
            return None
        if getattr(computer, "include_duration_confidence", False):
            return None
        joint, decoder = greedy.joint, greedy.decoder
        if not getattr(decoder, "blank_as_pad", False) or next(joint.parameters()).device.type != "cpu":
            return None
        if not _Prediction.supports(decoder, joint):
            return None
        if joint.is_adapter_available() or getattr(joint, "temperature", 1.0) != 1.0:
            return None
        layers = [layer for layer in joint.joint_net if not isinstance(layer, torch.nn.Dropout)]
        if len(layers) != 2 or type(layers[0]) not in _ACTIVATIONS or not isinstance(layers[1], torch.nn.Linear):
            return None
        linear = layers[1]
        weight = linear.weight.detach().float().numpy().T
        bias = linear.bias.detach().float().numpy()
        return cls(decoding, greedy, computer, _ACTIVATIONS[type(layers[0])], weight, bias)

    def predictions(self, encoder_output: torch.Tensor, encoded_lengths: torch.Tensor) -> list:
        """What NeMo's `rnnt_decoder_predictions_tensor(..., return_hypotheses=True)` returns: hypotheses with
        text, word timestamps and confidences, for encoder outputs [B, D, T] with their lengths [B]."""
        decoding = self.decoding
        hypotheses = decoding.decode_hypothesis(self(encoder_output, encoded_lengths))
        if decoding.compute_timestamps:
            kind = decoding.cfg.get("rnnt_timestamp_type", "all")
            hypotheses = [decoding.compute_rnnt_timestamps(hypothesis, kind) for hypothesis in hypotheses]
        if decoding.preserve_frame_confidence and (decoding.preserve_word_confidence
                                                   or decoding.preserve_token_confidence):
            hypotheses = decoding.compute_confidence(hypotheses)
        return hypotheses

    @torch.inference_mode()
    def __call__(self, encoder_output: torch.Tensor, encoded_lengths: torch.Tensor) -> list:
        """NeMo's greedy hypotheses (tokens, frames, durations, step confidences) before its post-processing."""
        hypotheses = []
        for frames, length in self._projected(encoder_output, encoded_lengths):
            labels, stamps, durations, rows, _ = self._decode_one(frames, length, None)
            hypotheses.append(self._hypothesis(labels, stamps, durations, rows))
        return hypotheses

    @property
    def streams(self) -> bool:
        """Whether `decode_chunks` serves this model (RNNT; TDT's jumps across chunks stay NeMo's)."""
        return self._durations is None

    @torch.inference_mode()
    def decode_chunks(self, encoder_output: torch.Tensor, encoded_lengths: torch.Tensor,
                      states: list["StreamState | None"]) -> list[tuple[list[tuple[int, int, float]], "StreamState"]]:
        """One chunk of each stream, carrying on from its state (None: a stream's first chunk), as NeMo's
        decoding with partial hypotheses does: each stream's new (token, frame from the stream's start,
        confidence) triples and its state after the chunk."""
        results = []
        for (frames, length), state in zip(self._projected(encoder_output, encoded_lengths), states, strict=True):
            start = None if state is None else (state.prediction, state.lstm)
            offset = 0 if state is None else state.frames
            labels, stamps, _, rows, (prediction, lstm) = self._decode_one(frames, length, start)
            confidences = self._confidences(self._log_probs(rows))
            if confidences is None:
                confidences = [1.0] * len(labels)
            tokens = [(label, offset + stamp, float(conf))
                      for label, stamp, conf in zip(labels, stamps, confidences, strict=True)]
            results.append((tokens, StreamState(prediction, lstm, offset + length)))
        return results

    def _projected(self, encoder_output: torch.Tensor, encoded_lengths: torch.Tensor):
        projected = self._greedy.joint.project_encoder(encoder_output.transpose(1, 2)).float().numpy()
        return zip(projected, encoded_lengths.tolist(), strict=True)

    def _joint(self, frames: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        hidden = self._activation(frames + prediction)
        return hidden @ self._weight + self._bias

    def _decode_one(self, frames: np.ndarray, length: int, start):
        """Tokens, frames, durations and joint outputs of one utterance, and the prediction network's output
        and state at its end; `start`: those to carry on from (None: after the start-of-sequence blank)."""
        tdt = self._durations is not None
        tokens_end = self._weight.shape[1] - (len(self._durations) if tdt else 0)
        prediction, state = start or self._prediction.step(self._blank, self._prediction.initial())
        labels, stamps, durations, rows = [], [], [], []
        time, last_stamp, repeats = 0, -1, 0
        while time < length:
            logits = self._joint(frames[time: min(length, time + _BLOCK)], prediction)
            found = None
            for offset, row in enumerate(logits):  # the first frame of the block that emits
                label = int(row[:tokens_end].argmax())
                duration = self._durations[int(row[tokens_end:].argmax())] if tdt else 1
                if label != self._blank:
                    found = offset, row, label, duration
                    break
                if tdt and duration > 1:  # a blank may jump past the rest of the block
                    time += offset + duration
                    break
            else:
                time += len(logits)
            if found is None:
                continue
            offset, row, label, duration = found
            time += offset
            repeats = repeats + 1 if time == last_stamp else 1
            last_stamp = time
            labels.append(label)
            stamps.append(time)
            durations.append(duration)
            rows.append(row)
            if tdt:
                time += duration
            prediction, state = self._prediction.step(label, state)
            # NeMo's max_symbols: after that many tokens on one frame, move on to the next.
            if self._max_symbols is not None and repeats >= self._max_symbols and time == last_stamp:
                time += 1
        return labels, stamps, durations, rows, (prediction, state)

    @staticmethod
    def _log_probs(rows: list[np.ndarray]) -> torch.Tensor | None:
        # NeMo's joint on a CPU returns log-probabilities over all its outputs (TDT durations included).
        return torch.from_numpy(np.stack(rows)).log_softmax(-1) if rows else None

    def _confidences(self, log_probs: torch.Tensor | None) -> list[float] | None:
        """NeMo's step confidences of the emitting steps, from their `_log_probs` (None where decoding keeps
        none)."""
        if not self._computer.preserve_step_confidence:
            return None
        if log_probs is None:
            return []
        if self._durations is not None:
            return self._computer._get_step_confidence(log_probs, len(self._durations)).tolist()
        return self._computer._get_step_confidence(log_probs).tolist()

    def _hypothesis(self, labels, stamps, durations, rows):
        from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

        log_probs = self._log_probs(rows)
        score = 0.0
        if log_probs is not None:
            score = float(log_probs[torch.arange(len(labels)), torch.tensor(labels)].sum())
        confidence = self._confidences(log_probs)
        include_durations = self._durations is not None and getattr(self._computer, "include_duration", False)
        return Hypothesis(
            score=score,
            y_sequence=torch.tensor(labels, dtype=torch.long),
            timestamp=torch.tensor(stamps, dtype=torch.long),
            token_duration=torch.tensor(durations, dtype=torch.long) if include_durations else torch.empty(0),
            alignments=None,
            dec_state=None,
            non_blank_step_confidence_precomputed=confidence,
        )
