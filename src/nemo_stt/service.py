"""From settings to a running engine: the one place that maps environment variables onto engine options."""

from .settings import Settings, with_backend_defaults, with_device_defaults


def runs_on_gpu(settings: Settings) -> bool:
    """Whether the model will run on a GPU: DEVICE=cuda[:N], or DEVICE unset on a machine with CUDA."""
    import torch

    return (settings.DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def engine_config(settings: Settings):
    from .engine import BatchPolicy, EngineConfig, VadConfig

    on_gpu = runs_on_gpu(settings)
    settings = with_backend_defaults(with_device_defaults(settings, on_gpu), on_gpu)
    batching = BatchPolicy(
        workers=settings.CONCURRENCY + 1,
        max_batch_items=settings.BATCH_MAX_SIZE,
        max_batch_seconds=settings.BATCH_MAX_AUDIO_SEC,
        max_wait=settings.BATCH_MAX_WAIT_MS / 1000,
    )
    vad = VadConfig(
        method=settings.VAD,
        dilatation=settings.VAD_DILATATION,
        min_speech=settings.VAD_MIN_SPEECH_DURATION,
        min_silence=settings.VAD_MIN_SILENCE_DURATION,
        max_segment=settings.VAD_MAX_SEGMENT_DURATION,
    ) if settings.VAD else None
    return EngineConfig(
        model=settings.MODEL,
        architecture=settings.ARCHITECTURE,
        device=settings.DEVICE,
        num_threads=settings.NUM_THREADS,
        batching=batching,
        max_requests=settings.QUEUE_MAX_SIZE,
        language=settings.LANGUAGE,
        vad=vad,
        long_file_threshold=settings.LONG_FILE_THRESHOLD,
        long_file_chunk=settings.LONG_FILE_CHUNK_LEN,
        long_file_context=settings.LONG_FILE_CHUNK_CONTEXT_LEN,
        local_attention=settings.LONG_FILE_LOCAL_ATTENTION,
        punctuation_model=settings.PUNCTUATION_MODEL,
        punctuation_force=settings.PUNCTUATION_FORCE,
        gpu_autocast=settings.GPU_AUTOCAST,
        cpu_autocast=settings.CPU_AUTOCAST,
        backend=settings.INFERENCE_BACKEND,
        onnx_quantize=settings.ONNX_QUANTIZE,
        onnx_cache_dir=settings.onnx_cache_dir,
    )


def load_engine(settings: Settings, warm_up: bool = True):
    """Load the model as the settings say; with `warm_up`, run one inference so that the first request is fast."""
    from .engine import Engine

    engine = Engine(engine_config(settings))
    if warm_up:
        engine.warm_up()
    return engine
