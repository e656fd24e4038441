"""The deployment files: Dockerfiles, the containers' entry point and health check, compose files, Kubernetes.

No image is built and no cluster is reached: the Dockerfiles are linted (hadolint), the entry point and the
health check run here against fakes, the compose files are checked against the Compose Specification's schema
and the Kubernetes manifests, rendered by kustomize, against Kubernetes' and KEDA's schemas; every variable
they set must be a setting of the service.

The entry point and the task-mode health check run in Linux namespaces of their own (mount, network, PID), as
root: the users they create, the folders they make and the processes they look for stay out of this machine.
"""

import functools
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices

from nemo_stt.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
COMPOSE_FILES = sorted(DOCKER.glob("compose.*.yaml"))


def _setting_names() -> frozenset[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(name)
        if isinstance(field.validation_alias, AliasChoices):
            names.update(choice for choice in field.validation_alias.choices if isinstance(choice, str))
    return frozenset(names)


SETTING_NAMES = _setting_names()


def tool(name: str) -> str:
    """A command-line tool of the dev extras (beside this interpreter), or from PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make install` installs the dev extras")
    return found


# ---------------------------------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    # Failing at the lowest severity, and with no configuration of this machine's user to ignore rules.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([tool("hadolint"), "--failure-threshold", "style", "--no-color", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_is_hadolint_clean(dockerfile, tmp_path):
    result = _hadolint(dockerfile, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_what_it_should(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    result = _hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_installs_as_make_install_does(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    args = dict(arg.split("=", 1) for keyword, arg in instructions if keyword == "ARG" and "=" in arg)
    pinned = (ROOT / "constraints.txt").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in pinned.split()
    runs = [arg for keyword, arg in instructions if keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if '"torch==$TORCH_VERSION"' in run)
    project_steps = [i for i, run in enumerate(runs) if "pip install" in run and " ." in run]
    assert len(project_steps) == 2  # the dependencies, then the package itself
    assert all(i > torch_step and "-c constraints.txt" in runs[i] for i in project_steps)
    assert "--no-deps" in runs[project_steps[1]]
    assert "libjemalloc2" in runs[0] and "tini" in runs[0]
    if dockerfile.name == "Dockerfile":
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert instructions[0][1].startswith("python:3.1")
    else:
        assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "-runtime-" in args["CUDA_IMAGE"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_runs_the_entrypoint_with_a_healthcheck(dockerfile):
    instructions = dict(dockerfile_instructions(dockerfile))
    assert json.loads(instructions["ENTRYPOINT"]) == ["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    assert instructions["EXPOSE"] == "80" == str(Settings.model_fields["HTTP_PORT"].default)
    assert instructions["HEALTHCHECK"].endswith('CMD ["nemo-stt-healthcheck"]')
    assert "USER" not in instructions  # root until the entry point switches


def _dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a folder above it decides."""
    included = True
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch(candidate, pattern) for candidate in candidates):
            included = negated
    return included


def test_build_context_holds_what_the_dockerfiles_copy():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for dockerfile in DOCKERFILES:
        for keyword, arguments in dockerfile_instructions(dockerfile):
            if keyword != "COPY":
                continue
            sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
            for source in sources:
                files = [source] if (ROOT / source).is_file() else [
                    str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts]
                assert files, f"{dockerfile.name} copies {source}, which does not exist"
                left_out = [f for f in files if not _dockerignore_includes(f, patterns)]
                assert not left_out, f"{dockerfile.name} copies {source} but .dockerignore leaves out {left_out}"
    assert not _dockerignore_includes(".venv/bin/python", patterns)
    assert _dockerignore_includes("src/nemo_stt/assets/demo-en-fastconformer.nemo", patterns)


SHELL_SCRIPTS = [DOCKER / "entrypoint.sh", *sorted((ROOT / "benchmarks").glob("*.sh"))]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_are_shellcheck_clean(script):
    result = subprocess.run([tool("shellcheck"), "--severity=style", str(script)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- namespaces


@functools.cache
def _namespaces_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to create users and switch to them in a namespace of its own"
    for command in ("unshare", "setpriv", "useradd", "ip"):
        if shutil.which(command) is None:
            return f"needs {command}"
    with tempfile.TemporaryDirectory() as workdir:
        probe = in_namespaces("true", {"PATH": os.environ.get("PATH", "")}, Path(workdir), timeout=30)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


@pytest.fixture
def namespaces():
    problem = _namespaces_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def shared_tmp():
    """A folder that other users can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="nemo-stt-deploy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# A copy-on-write /etc (useradd writes there, not in this machine's), and empty /var, /home and /opt with
# /var/www/.cache owned by www-data, as in the images.
NAMESPACE_SETUP = """\
set -euo pipefail
mount --make-rprivate /
mount -t tmpfs tmpfs "$OVERLAY"
mkdir "$OVERLAY/upper" "$OVERLAY/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$OVERLAY/upper,workdir=$OVERLAY/work" /etc
for dir in /var /home /opt; do mount -t tmpfs -o mode=755 tmpfs "$dir"; done
mkdir -p /var/www/.cache && chown 33:33 /var/www/.cache
ip link set lo up
"""


def in_namespaces(script: str, env: dict[str, str], workdir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a bash script as root in new mount, network and PID namespaces that look like the images' file system."""
    overlay = tempfile.mkdtemp(dir=workdir)
    return subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c",
                           NAMESPACE_SETUP + script], capture_output=True, text=True,
                          env={**env, "OVERLAY": overlay}, timeout=timeout)


# ------------------------------------------------------------------------------------------------ entry point

FAKE_NEMO_STT = r"""#!/bin/bash
# Stands for nemo-stt: says who it runs as and with what environment.
echo "args=$*"
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "groups=$(id -G)"
echo "passwd=$(getent passwd "$(id -u)")"
echo "HOME=$HOME"
echo "XDG_CACHE_HOME=${XDG_CACHE_HOME-}"
echo "HF_HOME=${HF_HOME-}"
echo "MODEL=${MODEL-}"
echo "cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
echo "cap_amb=$(awk '/^CapAmb:/ {print $2}' /proc/self/status)"
echo "cache_owner=$(stat -c %u:%g "$XDG_CACHE_HOME" 2>/dev/null)"
if [[ -w $XDG_CACHE_HOME ]]; then echo cache_writable=1; else echo cache_writable=0; fi
if [[ -n ${BIND_PORT:-} ]]; then
  if /usr/bin/python3 -c "import socket, sys; socket.socket().bind(('0.0.0.0', int(sys.argv[1])))" "$BIND_PORT" \
     2>/dev/null; then echo bound=1; else echo bound=0; fi
fi
"""

NO_CAPABILITIES = "0000000000000000"
BIND_CAPABILITY = "0000000000000400"  # CAP_NET_BIND_SERVICE, bit 10


class EntrypointRun:
    def __init__(self, result: subprocess.CompletedProcess):
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.out = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def __repr__(self):
        return f"rc={self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@pytest.fixture
def entrypoint(namespaces, shared_tmp):
    """Run docker/entrypoint.sh with `nemo-stt` faked on PATH; `setup` runs first, as root; `as_user` starts the
    entry point as that uid:gid instead of root (Kubernetes' runAsUser)."""
    bin_dir = shared_tmp / "bin"
    bin_dir.mkdir(mode=0o755)
    fake = bin_dir / "nemo-stt"
    fake.write_text(FAKE_NEMO_STT)
    fake.chmod(0o755)
    script = shared_tmp / "entrypoint.sh"
    shutil.copy(DOCKER / "entrypoint.sh", script)
    script.chmod(0o755)

    def run(*args: str, setup: str = "", as_user: str | None = None, **variables: str) -> EntrypointRun:
        env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **variables}
        start = f"setpriv --reuid={as_user.split(':')[0]} --regid={as_user.split(':')[1]} --clear-groups " \
            if as_user else ""
        quoted = " ".join(f"'{arg}'" for arg in args)
        result = in_namespaces(f"{setup}\ncd /\nexec {start}bash {script} {quoted}\n", env, shared_tmp)
        return EntrypointRun(result)

    return run


def test_entrypoint_runs_as_www_data_with_the_cache_in_var_www(entrypoint):
    run = entrypoint(SERVICE_MODE="http")
    assert run.returncode == 0, run
    assert run.out["args"] == "serve"
    assert (run.out["uid"], run.out["gid"], run.out["groups"]) == ("33", "33", "33"), run
    assert run.out["HOME"] == "/var/www"
    assert run.out["XDG_CACHE_HOME"] == "/var/www/.cache"
    assert run.out["HF_HOME"] == "/var/www/.cache/huggingface"
    assert run.out["cache_writable"] == "1", run
    assert run.stderr == "", run


def test_entrypoint_creates_the_user_of_user_id_and_moves_the_cache(entrypoint):
    run = entrypoint(USER_ID="54321", GROUP_ID="54322")
    assert run.returncode == 0, run
    assert (run.out["uid"], run.out["gid"], run.out["groups"]) == ("54321", "54322", "54322"), run
    assert run.out["passwd"] == "appuser:x:54321:54322::/home/appuser:/usr/sbin/nologin"
    assert run.out["HOME"] == "/home/appuser"
    assert run.out["XDG_CACHE_HOME"] == "/home/appuser/.cache"
    assert run.out["HF_HOME"] == "/home/appuser/.cache/huggingface"
    assert run.out["cache_owner"] == "54321:54322"
    assert run.out["cache_writable"] == "1", run


def test_entrypoint_defaults_the_missing_id_to_33(entrypoint):
    run = entrypoint(USER_ID="54321")
    assert (run.out["uid"], run.out["gid"]) == ("54321", "33"), run
    assert run.out["HOME"] == "/home/appuser"  # an id was given


def test_entrypoint_uses_an_existing_user_of_that_id(entrypoint):
    run = entrypoint(USER_ID="33", GROUP_ID="33")
    assert run.out["passwd"].startswith("www-data:"), run
    assert run.out["HOME"] == "/home/appuser"
    assert run.out["cache_writable"] == "1", run


def test_entrypoint_keeps_the_users_cache_variables(entrypoint):
    run = entrypoint(XDG_CACHE_HOME="/opt/cache", HF_HOME="/opt/models/hf")
    assert run.out["XDG_CACHE_HOME"] == "/opt/cache", run
    assert run.out["HF_HOME"] == "/opt/models/hf"
    assert run.out["cache_owner"] == "33:33"  # created for the service user
    assert run.out["HOME"] == "/var/www"


def test_entrypoint_refuses_an_invalid_user_id(entrypoint):
    run = entrypoint(USER_ID="www-data")
    assert run.returncode == 2, run
    assert "invalid USER_ID='www-data'" in run.stderr
    assert "uid" not in run.out  # nemo-stt did not start


def test_entrypoint_gives_a_fresh_mount_point_to_the_service_user(entrypoint):
    # What Docker creates for `-v HOSTPATH:/home/appuser/.cache` when HOSTPATH did not exist: root's and empty.
    run = entrypoint(USER_ID="54321", GROUP_ID="54321", setup="mkdir -p /home/appuser/.cache")
    assert run.out["cache_owner"] == "54321:54321", run
    assert run.out["cache_writable"] == "1"


def test_entrypoint_leaves_a_cache_with_files_to_its_owner_and_says_so(entrypoint):
    run = entrypoint(USER_ID="54321", setup="mkdir -p /home/appuser/.cache && touch /home/appuser/.cache/model")
    assert run.returncode == 0, run
    assert run.out["cache_owner"] == "0:0"
    assert run.out["cache_writable"] == "0"
    assert "the cache /home/appuser/.cache is not writable by 54321:33" in run.stderr


def test_entrypoint_warns_of_a_cache_mounted_where_user_id_no_longer_looks(entrypoint):
    mount = "mount -t tmpfs tmpfs /var/www/.cache"
    run = entrypoint(USER_ID="54321", setup=mount)
    assert "a volume is mounted at /var/www/.cache, but with USER_ID or GROUP_ID set the cache is " \
        "/home/appuser/.cache" in run.stderr, run
    assert "mounted" not in entrypoint(setup=mount).stderr  # without USER_ID that is the cache
    assert "mounted" not in entrypoint(USER_ID="54321").stderr


@pytest.mark.parametrize(("variables", "capabilities"), [
    ({"SERVICE_MODE": "http", "HTTP_PORT": "80"}, BIND_CAPABILITY),
    ({"SERVICE_MODE": "http"}, BIND_CAPABILITY),  # 80 by default
    ({"SERVICE_MODE": "http", "HTTP_PORT": "8080"}, NO_CAPABILITIES),
    ({"SERVICE_MODE": "websocket", "STREAMING_PORT": "80", "HTTP_PORT": "8080"}, BIND_CAPABILITY),
    ({"SERVICE_MODE": "websocket", "STREAMING_PORT": "8080", "HTTP_PORT": "80"}, NO_CAPABILITIES),
    ({"SERVICE_MODE": " WebSocket ", "STREAMING_PORT": "80"}, BIND_CAPABILITY),
    ({"SERVICE_MODE": "task", "HTTP_PORT": "80", "STREAMING_PORT": "80"}, NO_CAPABILITIES),
    ({"SERVICE_MODE": "http,websocket", "HTTP_PORT": "8080", "STREAMING_PORT": "80"}, BIND_CAPABILITY),
    ({"SERVICE_MODE": "WebSocket, http", "HTTP_PORT": "8080", "STREAMING_PORT": "8081"}, NO_CAPABILITIES),
], ids=["http-80", "http-default", "http-8080", "websocket-80", "websocket-8080", "websocket-case", "task",
        "combined-80", "combined-8080"])
def test_entrypoint_keeps_the_bind_capability_for_its_modes_low_port_only(entrypoint, variables, capabilities):
    # A new network namespace admits unprivileged binds from port 1024 only (Docker's lowers that to 0).
    run = entrypoint(**variables)
    assert run.returncode == 0, run
    assert run.out["uid"] == "33"
    assert (run.out["cap_eff"], run.out["cap_amb"]) == (capabilities, capabilities), run


def test_entrypoint_lets_the_service_user_bind_port_80(entrypoint):
    assert entrypoint(SERVICE_MODE="http", HTTP_PORT="80", BIND_PORT="80").out["bound"] == "1"
    # Without the capability the same bind fails: the check above can tell.
    assert entrypoint(SERVICE_MODE="http", HTTP_PORT="8080", BIND_PORT="80").out["bound"] == "0"


def test_entrypoint_warns_when_the_shared_folder_is_missing_in_task_mode(entrypoint):
    run = entrypoint(SERVICE_MODE="task")
    assert run.returncode == 0, run
    assert "SHARED_FOLDER=/opt/audio does not exist" in run.stderr
    run = entrypoint(SERVICE_MODE="task", SHARED_FOLDER="/opt/shared", setup="mkdir -p /opt/shared")
    assert run.stderr == "", run
    assert "SHARED_FOLDER" not in entrypoint(SERVICE_MODE="http").stderr


def test_entrypoint_stops_on_a_mounted_model_the_service_user_cannot_read(entrypoint):
    setup = "mkdir -p /opt/models && echo x > /opt/models/m.nemo && chmod 600 /opt/models/m.nemo"
    run = entrypoint(MODEL="/opt/models/m.nemo", setup=setup)
    assert run.returncode == 2, run
    assert "MODEL=/opt/models/m.nemo is not readable by 33:33" in run.stderr
    run = entrypoint(MODEL="/opt/models/m.nemo", setup=setup + " && chmod 644 /opt/models/m.nemo")
    assert run.returncode == 0, run
    assert run.out["MODEL"] == "/opt/models/m.nemo"


def test_entrypoint_passes_a_hugging_face_id_on(entrypoint):
    run = entrypoint(MODEL="nvidia/parakeet-tdt-0.6b-v2")
    assert run.returncode == 0, run
    assert run.out["MODEL"] == "nvidia/parakeet-tdt-0.6b-v2"


def test_entrypoint_started_as_another_user_runs_as_it(entrypoint):
    run = entrypoint(as_user="33:33", HTTP_PORT="8080")  # as the Kubernetes manifests start it
    assert run.returncode == 0, run
    assert (run.out["uid"], run.out["HOME"], run.out["cache_writable"]) == ("33", "/var/www", "1")
    assert run.stderr == "", run
    run = entrypoint(as_user="33:33")  # port 80: the capability cannot be kept without root
    assert run.out["cap_amb"] == NO_CAPABILITIES, run
    assert "port 80 is below 1024 and uid 33 may not bind it" in run.stderr
    run = entrypoint(as_user="33:33", USER_ID="1000", HTTP_PORT="8080")
    assert run.out["uid"] == "33", run
    assert "cannot switch to USER_ID:GROUP_ID=1000:33" in run.stderr
    assert run.out["HOME"] == "/home/appuser"


def test_entrypoint_runs_transcribe_as_the_service_user(entrypoint):
    run = entrypoint("transcribe", "/opt/audio/a.wav")
    assert run.out["args"] == "transcribe /opt/audio/a.wav", run
    assert run.out["uid"] == "33"


def test_entrypoint_runs_other_commands_as_given(entrypoint):
    run = entrypoint("id", "-u")
    assert run.returncode == 0, run
    assert run.stdout.strip() == "0"


# ------------------------------------------------------------------------------------------------ health check


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("nemo_stt_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_healthcheck(**variables: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT / "src"), **variables}
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True,
                          env=env, timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def http_server():
    """An HTTP server on 127.0.0.1 whose /healthcheck answers what `answer` holds."""
    answer = {"body": b"1"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status = 200 if self.path == "/healthcheck" else 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], answer
    server.shutdown()
    server.server_close()


def test_healthcheck_http(http_server):
    port, answer = http_server
    result = run_healthcheck(SERVICE_MODE="http", HTTP_PORT=str(port))
    assert result.returncode == 0, result.stderr
    # A proxy set for model downloads is not used for the local check.
    assert run_healthcheck(SERVICE_MODE="http", HTTP_PORT=str(port), HTTP_PROXY="http://127.0.0.1:9",
                           http_proxy="http://127.0.0.1:9").returncode == 0
    answer["body"] = b"0"
    result = run_healthcheck(SERVICE_MODE="http", HTTP_PORT=str(port))
    assert result.returncode == 1
    assert "not 1" in result.stderr


def test_healthcheck_http_without_a_server():
    result = run_healthcheck(HTTP_PORT=str(_free_port()))  # SERVICE_MODE defaults to http
    assert result.returncode == 1
    assert "unhealthy (http)" in result.stderr


def test_healthcheck_checks_every_mode_of_a_combined_process(http_server):
    port, _ = http_server
    with socket.socket() as listener:  # a websocket port: accepts connections and closes them
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def close_each():
            while True:
                try:
                    listener.accept()[0].close()
                except OSError:
                    return

        threading.Thread(target=close_each, daemon=True).start()
        result = run_healthcheck(SERVICE_MODE="http,websocket", HTTP_PORT=str(port),
                                 STREAMING_PORT=str(listener.getsockname()[1]))
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy (http,websocket): GET ")
    result = run_healthcheck(SERVICE_MODE="http,websocket", HTTP_PORT=str(port), STREAMING_PORT=str(_free_port()))
    assert result.returncode == 1
    assert "unhealthy (websocket)" in result.stderr


def test_healthcheck_fails_on_invalid_settings():
    result = run_healthcheck(SERVICE_MODE="ftp")
    assert result.returncode == 1
    assert "invalid SERVICE_MODE='ftp'" in result.stderr


def test_healthcheck_websocket_answers_without_opening_a_websocket():
    import asyncio

    from websockets.asyncio.server import serve

    opened = []
    ready = threading.Event()
    state = {}

    async def handler(connection):
        opened.append(connection)

    async def main():
        # As websocket_server.run serves.
        async with serve(handler, "0.0.0.0", 0, ping_interval=None) as server:
            state["port"] = server.sockets[0].getsockname()[1]
            state["stop"] = asyncio.get_running_loop().create_future()
            state["loop"] = asyncio.get_running_loop()
            ready.set()
            await state["stop"]

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        result = run_healthcheck(SERVICE_MODE="websocket", STREAMING_PORT=str(state["port"]))
        assert result.returncode == 0, result.stderr
        assert opened == []
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)


def test_healthcheck_websocket_reports_a_server_that_does_not_answer(healthcheck, monkeypatch):
    monkeypatch.setattr(healthcheck, "TIMEOUT_SECONDS", 0.3)
    with socket.socket() as listener:  # accepts connections (the kernel does) but never reads them
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(healthcheck.Unhealthy, match="did not answer"):
            healthcheck.check_websocket(listener.getsockname()[1])
    with pytest.raises(healthcheck.Unhealthy, match="refused"):
        healthcheck.check_websocket(_free_port())


def test_healthcheck_recognises_the_service_process(healthcheck):
    assert healthcheck.is_service_process(["/opt/venv/bin/python", "/opt/venv/bin/nemo-stt", "serve"])
    assert healthcheck.is_service_process(["/opt/venv/bin/python3", "-m", "nemo_stt", "serve"])  # on jemalloc
    assert healthcheck.is_service_process(["nemo-stt", "serve"])
    assert not healthcheck.is_service_process(["/opt/venv/bin/python", "/opt/venv/bin/nemo-stt", "transcribe", "a"])
    assert not healthcheck.is_service_process(["python3", "/usr/local/bin/nemo-stt-healthcheck"])
    assert not healthcheck.is_service_process(["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint.sh", "serve"])


def test_healthcheck_reads_proc_net_addresses(healthcheck):
    import ipaddress

    assert healthcheck._address_from_hex("0100007F:18EB") == (ipaddress.ip_address("127.0.0.1"), 6379)
    mapped = "0000000000000000FFFF00000100007F:1628"  # ::ffff:127.0.0.1, port 5672
    assert healthcheck._address_from_hex(mapped) == (ipaddress.ip_address("127.0.0.1"), 5672)
    loopback6 = "00000000000000000000000001000000:1628"
    assert healthcheck._address_from_hex(loopback6) == (ipaddress.ip_address("::1"), 5672)
    assert healthcheck.broker_endpoint("redis://:secret@redis:6380/0") == ("redis", 6380)
    assert healthcheck.broker_endpoint("amqp://user:pw@rabbitmq//") == ("rabbitmq", 5672)
    assert healthcheck.broker_endpoint("redis+socket:///run/redis.sock") is None


def test_healthcheck_finds_a_process_connection(healthcheck):
    import ipaddress

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; s = socket.create_connection("
                                   f"('127.0.0.1', {port})); print('connected', flush=True); time.sleep(30)"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "connected"
            assert (ipaddress.ip_address("127.0.0.1"), port) in healthcheck.established_peers(client.pid)
        finally:
            client.kill()
            client.wait()


FAKE_WORKER = """\
import socket, sys, time
# argv: the listener's port, or 0 for none, then `serve`, as nemo-stt's are.
if sys.argv[1] != "0":
    connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
time.sleep(60)
"""

FAKE_BROKER = """\
import socket, sys, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
connections = []
while True:
    connections.append(listener.accept())
"""


@pytest.mark.parametrize(("worker", "broker_port", "expected", "message"), [
    ("connected", 6379, 0, "connected to the broker"),
    ("connected", 6380, 1, "holds no connection to the broker 127.0.0.1:6380"),
    ("unconnected", 6379, 1, "holds no connection"),
    (None, 6379, 1, "no nemo-stt serve process"),
], ids=["connected", "other-broker", "unconnected", "no-worker"])
def test_healthcheck_task(namespaces, shared_tmp, worker, broker_port, expected, message):
    (shared_tmp / "worker.py").write_text(FAKE_WORKER)
    (shared_tmp / "broker.py").write_text(FAKE_BROKER)
    python = sys.executable
    script = textwrap.dedent(f"""\
        wait_for() {{ for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.05; done; exit 9; }}
        {python} {shared_tmp}/broker.py 6379 > {shared_tmp}/broker.out &
        wait_for {shared_tmp}/broker.out listening
        """)
    if worker:
        port = 6379 if worker == "connected" else 0
        script += textwrap.dedent(f"""\
            (exec -a nemo-stt {python} {shared_tmp}/worker.py {port} serve > {shared_tmp}/worker.out) &
            wait_for {shared_tmp}/worker.out ready
            """)
    script += textwrap.dedent(f"""\
        SERVICE_MODE=task SERVICES_BROKER=redis://127.0.0.1:{broker_port} PYTHONPATH={ROOT / "src"} \\
            {python} {DOCKER / "healthcheck.py"} && echo rc=0 || echo rc=$?
        """)
    result = in_namespaces(script, {"PATH": os.environ["PATH"]}, shared_tmp)
    assert f"rc={expected}" in result.stdout, result.stdout + result.stderr
    assert message in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------- compose


@functools.cache
def compose_schema():
    return json.loads((SCHEMAS / "compose-spec.json").read_text())


def nemo_stt_services(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items()
            if str(service.get("image", "")).startswith("nemo-stt")}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_follows_the_compose_specification(path):
    compose = yaml.safe_load(path.read_text())
    jsonschema.Draft202012Validator(compose_schema()).validate(compose)
    # The schema refuses what Compose would: a misspelt key.
    broken = json.loads(json.dumps(compose))
    next(iter(broken["services"].values()))["enviroment"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(compose_schema()).validate(broken)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_services_follow_the_images_conventions(path):
    compose = yaml.safe_load(path.read_text())
    services = nemo_stt_services(compose)
    assert services
    for name, service in services.items():
        environment = service["environment"]
        assert set(environment) <= SETTING_NAMES, f"{name}: {set(environment) - SETTING_NAMES}"
        Settings(**{key: value for key, value in environment.items() if "${" not in str(value)})
        build = service["build"]
        assert (path.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        assert mounts["/var/www/.cache"] in compose["volumes"], "the cache is a named volume"
        assert "/opt/models" in mounts
        mode = environment["SERVICE_MODE"]
        port = {"http": "HTTP_PORT", "websocket": "STREAMING_PORT"}.get(mode)
        if port:
            container_port = str(environment.get(port, Settings.model_fields[port].default))
            assert [mapping.split(":")[-1] for mapping in service["ports"]] == [container_port]
        else:
            assert "ports" not in service
            assert mounts[environment["SHARED_FOLDER"]].endswith("audio")


def test_compose_task_scales_out_on_one_queue():
    compose = yaml.safe_load((DOCKER / "compose.task.yaml").read_text())
    workers = nemo_stt_services(compose)
    assert len(workers) >= 2
    assert {w["environment"]["SERVICE_MODE"] for w in workers.values()} == {"task"}
    assert len({w["environment"]["SERVICE_NAME"] for w in workers.values()}) == 1
    for worker in workers.values():
        broker = urlsplit(worker["environment"]["SERVICES_BROKER"])
        assert broker.scheme == "redis"
        assert compose["services"][broker.hostname]["image"].startswith("redis:")
        assert worker["depends_on"][broker.hostname]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["redis"]


# ------------------------------------------------------------------------------------------------- Kubernetes

KUBERNETES_VERSIONS = ["1.29", "1.37"]


def kustomizations() -> list[Path]:
    found = []
    for path in sorted(KUBERNETES.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text())["kind"] == "Kustomization":
            found.append(path.parent)
    return found


KUSTOMIZATIONS = kustomizations()


def _label(path: Path) -> str:
    return str(path.relative_to(KUBERNETES))


@functools.cache
def render(directory: Path) -> tuple[dict, ...]:
    """The manifests `kubectl apply -k` would apply, rendered by kubectl's kustomize."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl, which renders kustomizations, is not installed (the files alone are checked below)")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def keda_schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"keda-{kind.lower()}-v1alpha1.json").read_text())


def validate_manifest(doc: dict) -> None:
    import kubernetes_validate

    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.Draft202012Validator(keda_schema(doc["kind"])).validate(doc)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def container_env(docs, deployment: dict) -> dict[str, object]:
    """The container's variables: those of its ConfigMaps (envFrom), then its own env, which win."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in _of_kind(docs, "ConfigMap")}
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label)
def test_kubernetes_rendering_validates(directory):
    docs = render(directory)
    assert docs
    for doc in docs:
        validate_manifest(doc)


def test_kubernetes_validation_refuses_mistakes():
    import kubernetes_validate

    deployment = json.loads(json.dumps(_of_kind(render(KUBERNETES / "base" / "http"), "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/healthcheck"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(deployment)  # no port
    scaled = json.loads(json.dumps(_of_kind(render(KUBERNETES / "overlays" / "task-redis"), "ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled)  # metadata values are strings
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = "4"
    validate_manifest(scaled)
    del scaled["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled)  # the redis scaler needs its list


def test_kubernetes_files_validate_alone():
    """Every complete resource file of the kustomizations, without kustomize."""
    checked = 0
    for directory in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for resource in kustomization.get("resources", []):
            path = directory / resource
            if path.is_file():
                for doc in yaml.safe_load_all(path.read_text()):
                    validate_manifest(doc)
                    checked += 1
    assert checked >= 9


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label)
def test_kubernetes_variables_are_settings(directory):
    docs = render(directory)
    for deployment in _of_kind(docs, "Deployment"):
        env = container_env(docs, deployment)
        assert set(env) <= SETTING_NAMES, f"{deployment['metadata']['name']}: {set(env) - SETTING_NAMES}"
        Settings(**{name: value for name, value in env.items() if isinstance(value, str)})


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label)
def test_kubernetes_pods_follow_the_images_conventions(directory):
    docs = render(directory)
    for deployment in _of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = container_env(docs, deployment)
        assert pod["securityContext"]["runAsUser"] == 33  # www-data: the cache below is its own
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/var/www/.cache"}
        assert container["args"] == ["serve"]
        # torch would take the node's cores, not the pod's: NUM_THREADS follows the CPU request.
        assert env["NUM_THREADS"] == str(container["resources"]["requests"]["cpu"])
        if env["SERVICE_MODE"] == "task":
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts[env["SHARED_FOLDER"]]["readOnly"] is True


def _port(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name_or_number)


@pytest.mark.parametrize("directory", [d for d in KUSTOMIZATIONS if d.name.startswith(("http", "websocket"))],
                         ids=_label)
def test_kubernetes_probes_use_the_routes_that_exist(directory):
    docs = render(directory)
    (deployment,) = _of_kind(docs, "Deployment")
    (service,) = _of_kind(docs, "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = container_env(docs, deployment)
    port = int(env["HTTP_PORT" if env["SERVICE_MODE"] == "http" else "STREAMING_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert _port(container, service["spec"]["ports"][0]["targetPort"]) == port
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, probe
    if env["SERVICE_MODE"] == "http":
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container[probe]["httpGet"]
            # Readiness follows the drain at shutdown; liveness and start-up, the process.
            assert check["path"] == ("/ready" if probe == "readinessProbe" else "/healthcheck")
            assert _port(container, check["port"]) == port
    else:
        for probe in ("startupProbe", "readinessProbe"):
            assert _port(container, container[probe]["tcpSocket"]["port"]) == port
        assert container["livenessProbe"]["exec"]["command"] == ["nemo-stt-healthcheck"]


TASK_OVERLAYS = [d for d in KUSTOMIZATIONS if d.name.startswith("task-")]


@pytest.mark.parametrize("directory", TASK_OVERLAYS, ids=_label)
def test_keda_scales_the_workers_on_their_queue(directory):
    docs = render(directory)
    (scaled,) = _of_kind(docs, "ScaledObject")
    (deployment,) = _of_kind(docs, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"].get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    env = container_env(docs, deployment)
    assert env["SERVICE_MODE"] == "task"
    (trigger,) = scaled["spec"]["triggers"]
    auth = {doc["metadata"]["name"]: doc for doc in _of_kind(docs, "TriggerAuthentication")}
    secret_refs = {ref["name"] for ref in auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    deployment_secrets = {v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env", [])
                          if "secretKeyRef" in v.get("valueFrom", {})}
    assert secret_refs == deployment_secrets, "KEDA reads the broker's credentials where the workers do"
    if trigger["type"] == "redis":
        assert trigger["metadata"]["listName"] == env["SERVICE_NAME"]
        broker = urlsplit(env["SERVICES_BROKER"])
        assert trigger["metadata"]["address"] == f"{broker.hostname}:{broker.port or 6379}"
        assert trigger["metadata"]["databaseIndex"] == "0"  # the broker's db (results go to db 1)
    else:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == env["SERVICE_NAME"]
        assert env["SERVICES_BROKER"]["secretKeyRef"] == {
            "name": next(iter(secret_refs)), "key": auth[trigger["authenticationRef"]["name"]]["spec"][
                "secretTargetRef"][0]["key"]}
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label)
def test_gpu_overlays_ask_for_a_gpu_and_the_others_do_not(directory):
    docs = render(directory)
    gpu = directory.name.endswith("-gpu")
    for deployment in _of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = container_env(docs, deployment)
        limits = container["resources"]["limits"]
        if gpu:
            assert limits["nvidia.com/gpu"] == 1
            assert env["DEVICE"] == "cuda"
            assert env["CONCURRENCY"] == "0"
            assert container["image"].endswith(":gpu")
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        else:
            assert "nvidia.com/gpu" not in limits
            assert "DEVICE" not in env
            assert not container["image"].endswith(":gpu")


# ----------------------------------------------------------------------------------------------------- README


def test_readme_configuration_table_says_which_modes_read_each_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| variable")]
    listed = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for name in cells[0].replace("(or ", ", ").replace(")", "").split(","):
            listed[name.strip()] = cells[1]
    missing = sorted(name for name in Settings.model_fields if name not in listed)
    assert not missing, f"settings missing from the README's table: {missing}"
    assert all(listed[name] for name in Settings.model_fields), "a setting without the modes that read it"
