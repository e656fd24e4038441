"""nemo-stt: a speech-to-text server on NeMo ASR models, compatible with LinTO-STT-NeMo."""
