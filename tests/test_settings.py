import os
import subprocess
import sys

import pytest

from nemo_stt.settings import Settings, SettingsError, load_settings

SEED_DEFAULTS = {
    "SERVICE_MODE": "http",
    "MODEL": None,
    "ARCHITECTURE": None,
    "DEVICE": None,
    "NUM_THREADS": None,
    "CONCURRENCY": 0,
    "VAD": "auditok",
    "VAD_DILATATION": 0.5,
    "VAD_MIN_SPEECH_DURATION": 0.1,
    "VAD_MIN_SILENCE_DURATION": 0.1,
    "LONG_FILE_THRESHOLD": 480,
    "LONG_FILE_CHUNK_LEN": 240,
    "LONG_FILE_CHUNK_CONTEXT_LEN": 10,
    "STREAMING_PORT": 80,
    "STREAMING_MIN_CHUNK_SIZE": 0.5,
    "STREAMING_BUFFER_TRIMMING_SEC": 8,
    "STREAMING_PAUSE_FOR_FINAL": 1.5,
    "STREAMING_TIMEOUT_FOR_SILENCE": None,
    "STREAMING_MAX_WORDS_IN_BUFFER": 4,
    "STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND": 4,
    "PUNCTUATION_MODEL": None,
    "HTTP_PORT": 80,
    "BROKER_PASS": "",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SERVICE_BROKER", raising=False)


def test_defaults_are_the_seed_defaults():
    settings = load_settings()
    for name, value in SEED_DEFAULTS.items():
        assert getattr(settings, name) == value, name


def test_every_seed_variable_is_a_setting():
    seed_names = {
        "SERVICE_MODE", "MODEL", "ARCHITECTURE", "LANGUAGE", "DEVICE", "NUM_THREADS", "CUDA_VISIBLE_DEVICES",
        "CONCURRENCY", "VAD", "VAD_DILATATION", "VAD_MIN_SPEECH_DURATION", "VAD_MIN_SILENCE_DURATION",
        "LONG_FILE_THRESHOLD", "LONG_FILE_CHUNK_LEN", "LONG_FILE_CHUNK_CONTEXT_LEN", "SERVICE_NAME",
        "SERVICES_BROKER", "BROKER_PASS", "STREAMING_PORT", "STREAMING_MIN_CHUNK_SIZE",
        "STREAMING_BUFFER_TRIMMING_SEC", "STREAMING_PAUSE_FOR_FINAL", "STREAMING_TIMEOUT_FOR_SILENCE",
        "STREAMING_MAX_WORDS_IN_BUFFER", "STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND", "PUNCTUATION_MODEL",
        "USER_ID", "GROUP_ID", "HTTP_PORT",
    }
    assert seed_names <= set(Settings.model_fields)
    assert all(Settings.model_fields[name].description for name in seed_names)


def test_empty_values_mean_the_default(monkeypatch):
    for name in ("NUM_THREADS", "CONCURRENCY", "VAD", "HTTP_PORT", "STREAMING_TIMEOUT_FOR_SILENCE", "MODEL"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.NUM_THREADS is None
    assert settings.CONCURRENCY == 0
    assert settings.VAD == "auditok"
    assert settings.HTTP_PORT == 80
    assert settings.MODEL is None


def test_values_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("NUM_THREADS", "3")
    monkeypatch.setenv("ARCHITECTURE", "hybrid_bpe_ctc")
    monkeypatch.setenv("DEVICE", "cuda:1")
    monkeypatch.setenv("STREAMING_TIMEOUT_FOR_SILENCE", "1.8")
    settings = load_settings()
    assert (settings.NUM_THREADS, settings.ARCHITECTURE, settings.DEVICE) == (3, "hybrid_bpe_ctc", "cuda:1")
    assert settings.STREAMING_TIMEOUT_FOR_SILENCE == 1.8


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", "auditok"), ("1", "auditok"), ("auditok", "auditok"), ("silero", "silero"), ("SILERO", "silero"),
    ("false", None), ("0", None),
])
def test_vad_accepts_the_seed_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("VAD", raw)
    assert expected == load_settings().VAD


def test_service_broker_is_an_alias_of_services_broker(monkeypatch):
    monkeypatch.setenv("SERVICE_BROKER", "amqp://guest@127.0.0.1:5672")
    assert load_settings().SERVICES_BROKER == "amqp://guest@127.0.0.1:5672"
    monkeypatch.setenv("SERVICES_BROKER", "redis://127.0.0.1:6379")
    assert load_settings().SERVICES_BROKER == "redis://127.0.0.1:6379"


@pytest.mark.parametrize(("name", "value", "hint"), [
    ("NUM_THREADS", "abc", "integer"),
    ("NUM_THREADS", "0", "greater than or equal to 1"),
    ("ARCHITECTURE", "transformer", "ctc_bpe"),
    ("DEVICE", "gpu", "cpu, cuda, cuda:N"),
    ("VAD", "webrtc", "auditok"),
    ("SERVICE_MODE", "grpc", "http"),
    ("STREAMING_TIMEOUT_FOR_SILENCE", "5", "less than or equal to 2"),
    ("PAGE_WEBSOCKET_URL", "http://stt.example.com:2700/streaming", "a ws:// or wss:// URL"),
])
def test_an_invalid_value_names_the_variable_value_and_what_is_allowed(monkeypatch, name, value, hint):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert name in message and repr(value) in message and hint in message


def test_the_cli_stops_with_one_line_on_an_invalid_value():
    env = {"NUM_THREADS": "many", "PATH": "/usr/bin:/bin"}
    completed = subprocess.run([sys.executable, "-m", "nemo_stt", "serve"], env=env, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.strip() == "invalid NUM_THREADS='many': Input should be a valid integer, unable to parse " \
                                       "string as an integer"


@pytest.mark.parametrize(("raw", "canonical"), [
    ("http", "http"), (" WebSocket ", "websocket"), ("websocket, http", "http,websocket"),
    ("http,websocket,http", "http,websocket"),
])
def test_service_mode_has_one_spelling_per_set_of_modes(monkeypatch, raw, canonical):
    monkeypatch.setenv("SERVICE_MODE", raw)
    monkeypatch.setenv("HTTP_PORT", "8080")
    settings = load_settings()
    assert canonical == settings.SERVICE_MODE
    assert settings.modes == tuple(canonical.split(","))


@pytest.mark.parametrize(("variables", "name", "hint"), [
    ({"SERVICE_MODE": "http,task", "HTTP_PORT": "8080"}, "SERVICE_MODE", "the Celery worker takes the main thread"),
    ({"SERVICE_MODE": "task,websocket"}, "SERVICE_MODE", "task runs alone"),
    ({"SERVICE_MODE": "http,grpc"}, "SERVICE_MODE", "unknown mode 'grpc'"),
    ({"SERVICE_MODE": "http,,websocket", "HTTP_PORT": "8080"}, "SERVICE_MODE", "an empty mode name"),
    ({"SERVICE_MODE": "http,websocket"}, "STREAMING_PORT", "the same port as HTTP_PORT"),  # both 80 by default
    ({"SERVICE_MODE": "websocket,http", "HTTP_PORT": "9000", "STREAMING_PORT": "9000"}, "STREAMING_PORT",
     "each mode needs its own port"),
], ids=["http-task", "task-websocket", "unknown", "empty", "default-ports", "same-ports"])
def test_invalid_combinations_of_modes_are_refused_in_one_line(monkeypatch, variables, name, hint):
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"invalid {name}=") and hint in message, message


def test_the_same_port_is_fine_for_one_mode(monkeypatch):
    monkeypatch.setenv("SERVICE_MODE", "websocket")
    assert load_settings().STREAMING_PORT == load_settings().HTTP_PORT == 80


def test_the_cli_refuses_task_with_another_mode_with_exit_2_and_one_line():
    env = {"SERVICE_MODE": "task,http", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run([sys.executable, "-m", "nemo_stt", "serve"], env=env, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1
    assert completed.stderr.startswith("invalid SERVICE_MODE='task,http': task runs alone"), completed.stderr


def batching(**environment: str):
    """The batch policy, queue size and autocast setting that the engine gets from `environment`."""
    from nemo_stt.service import engine_config

    config = engine_config(load_settings(**environment))
    policy = config.batching
    return policy.workers, policy.max_batch_items, policy.max_batch_seconds, config.max_requests, config.gpu_autocast


def test_on_a_gpu_unset_batching_variables_take_the_gpu_defaults():
    # DEVICE=cuda makes the choice without a GPU (loading the model would then stop, not reading settings).
    assert batching(DEVICE="cuda") == (2, 64, 1200.0, 256, "bf16")
    assert batching(DEVICE="cuda:1", GPU_AUTOCAST="off") == (2, 64, 1200.0, 256, "off")
    assert batching(DEVICE="cpu") == batching() == (1, 16, 120.0, 64, "bf16")  # no CUDA on this machine


def test_on_a_gpu_batching_variables_that_are_set_are_kept_even_at_the_cpu_default(monkeypatch):
    environment = {"BATCH_MAX_SIZE": "16", "CONCURRENCY": "0", "QUEUE_MAX_SIZE": "", "BATCH_MAX_AUDIO_SEC": "90"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert batching(DEVICE="cuda") == (1, 16, 90.0, 256, "bf16")  # QUEUE_MAX_SIZE empty: unset


def test_cpu_autocast_is_auto_unless_set_and_reaches_the_engine(monkeypatch):
    from nemo_stt.service import engine_config

    assert engine_config(load_settings()).cpu_autocast == "auto"
    for value in ("bf16", "off"):
        monkeypatch.setenv("CPU_AUTOCAST", value)
        assert engine_config(load_settings()).cpu_autocast == value
    monkeypatch.setenv("CPU_AUTOCAST", "fp16")
    with pytest.raises(SettingsError, match="invalid CPU_AUTOCAST='fp16'"):
        load_settings()


def test_gpu_autocast_accepts_bf16_or_off(monkeypatch):
    monkeypatch.setenv("GPU_AUTOCAST", "fp16")
    with pytest.raises(SettingsError, match="invalid GPU_AUTOCAST='fp16'"):
        load_settings()


def test_the_onnx_backend_on_a_cpu_takes_two_loops_and_batches_of_four_unless_set():
    assert batching(INFERENCE_BACKEND="onnx", DEVICE="cpu") == (2, 4, 120.0, 64, "bf16")
    assert batching(INFERENCE_BACKEND="onnx", CONCURRENCY="0", BATCH_MAX_SIZE="16")[:2] == (1, 16)
    assert batching(INFERENCE_BACKEND="torch", DEVICE="cpu")[:2] == (1, 16)


def test_onnx_settings_are_validated_and_the_cache_follows_xdg_cache_home(monkeypatch):
    with pytest.raises(SettingsError, match="invalid INFERENCE_BACKEND='tensorrt'"):
        load_settings(INFERENCE_BACKEND="tensorrt")
    with pytest.raises(SettingsError, match="invalid ONNX_QUANTIZE='int4'"):
        load_settings(ONNX_QUANTIZE="int4")
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/cache")
    assert load_settings().onnx_cache_dir == "/srv/cache/nemo-stt/onnx"
    monkeypatch.setenv("ONNX_CACHE_DIR", "/data/onnx")
    assert load_settings().onnx_cache_dir == "/data/onnx"
