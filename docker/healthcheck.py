#!/usr/bin/env python3
"""Health check of a nemo-stt container, for the modes named by SERVICE_MODE: exit 0 when healthy, 1 when not.
With several modes in one process (`http,websocket`), every one of them is checked, and the first that fails
makes the container unhealthy.

- http: `GET /healthcheck` on HTTP_PORT answers 200 with `1`. The server listens only once the model is loaded
  and warmed up, so this says the service can transcribe.
- websocket: a TCP connection to STREAMING_PORT and an empty line, which the server answers by closing the
  connection: its listener is up (it opens once the model is loaded) and its event loop runs. No websocket is
  opened, so the check takes none of the STREAMING_MAX_CONNECTIONS places; the server logs one INFO line
  ("connection closed") per check.
- task: a `nemo-stt serve` process is running and holds an established TCP connection to the broker of
  SERVICES_BROKER. Celery's `inspect ping` is not used: on GPU the worker runs the solo pool, which answers
  control messages only between tasks, so a worker busy with a long file would be reported unhealthy. A broker
  URL without a TCP host:port (a Unix socket) leaves the check to the process alone.

Settings are read by nemo_stt.settings, so values are taken exactly as the service takes them.
"""

import ipaddress
import os
import socket
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 5.0
DEFAULT_BROKER_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672, "amqps": 5671}
TCP_ESTABLISHED = "01"


class Unhealthy(Exception):
    pass


def check_http(port: int) -> str:
    # No proxy: an HTTP_PROXY set for model downloads must not take the check elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{port}/healthcheck"
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read(16)
    except OSError as error:
        raise Unhealthy(f"GET {url}: {error}") from None
    if body.strip() != b"1":
        raise Unhealthy(f"GET {url} answered {body!r}, not 1")
    return f"GET {url}: 1"


def check_websocket(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS) as connection:
            connection.sendall(b"\r\n")
            while connection.recv(4096):  # whatever the server says, it closes: wait for that
                pass
    except ConnectionResetError:
        pass  # closed without a lingering half-close: the server reacted all the same
    except TimeoutError:
        raise Unhealthy(f"port {port} accepted a connection but did not answer within {TIMEOUT_SECONDS:g} s") from None
    except OSError as error:
        raise Unhealthy(f"port {port}: {error}") from None
    return f"port {port} answers"


def is_service_process(argv: list[str]) -> bool:
    """`nemo-stt serve`, as the console script or as `python -m nemo_stt serve` (after the jemalloc restart)."""
    if "serve" not in argv:
        return False
    return any(os.path.basename(arg) == "nemo-stt" for arg in argv[:2]) or argv[1:3] == ["-m", "nemo_stt"]


def service_pids(proc: Path = Path("/proc")) -> list[int]:
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [arg.decode(errors="replace") for arg in (entry / "cmdline").read_bytes().split(b"\0") if arg]
        except OSError:  # ended meanwhile
            continue
        if is_service_process(argv):
            pids.append(int(entry.name))
    return pids


def broker_endpoint(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or DEFAULT_BROKER_PORTS.get(parts.scheme, 0)


def _address_from_hex(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/tcp{,6}: the IP as 32-bit words in host (little-endian) order, then the port."""
    ip_hex, port_hex = text.split(":")
    raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(port_hex, 16)


def established_peers(pid: int, proc: Path = Path("/proc")) -> set[tuple]:
    """The (ip, port) peers of the process's established TCP connections."""
    inodes = set()
    for fd in (proc / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    peers = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == TCP_ESTABLISHED and fields[9] in inodes:
                peers.add(_address_from_hex(fields[2]))
    return peers


def check_task(broker_url: str) -> str:
    pids = service_pids()
    if not pids:
        raise Unhealthy("no nemo-stt serve process is running")
    endpoint = broker_endpoint(broker_url)
    if endpoint is None:
        return f"worker process {pids[0]} is running (the broker has no TCP address to check)"
    host, port = endpoint
    try:
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0])
                     for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError as error:
        raise Unhealthy(f"cannot resolve the broker host {host}: {error}") from None
    for pid in pids:
        try:
            peers = established_peers(pid)
        except PermissionError:
            raise Unhealthy(f"cannot read the connections of process {pid} (run the check as its user)") from None
        if any(ip in addresses and peer_port == port for ip, peer_port in peers):
            return f"worker process {pid} is connected to the broker {host}:{port}"
    raise Unhealthy(f"worker process {pids[0]} holds no connection to the broker {host}:{port}")


def main() -> int:
    from nemo_stt.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 1
    checks = {
        "http": lambda: check_http(settings.HTTP_PORT),
        "websocket": lambda: check_websocket(settings.STREAMING_PORT),
        "task": lambda: check_task(settings.SERVICES_BROKER),
    }
    messages = []
    for mode in settings.modes:
        try:
            messages.append(checks[mode]())
        except Unhealthy as problem:
            print(f"unhealthy ({mode}): {problem}", file=sys.stderr)
            return 1
    print(f"healthy ({settings.SERVICE_MODE}): {'; '.join(messages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
