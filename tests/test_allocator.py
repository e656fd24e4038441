from nemo_stt.allocator import JEMALLOC_CONF


def test_the_server_runs_on_jemalloc_with_pages_kept_for_reuse(http_server):
    pid = http_server.process.pid  # the same process after it started itself again
    with open(f"/proc/{pid}/maps") as maps:
        assert any("libjemalloc" in line for line in maps)
    with open(f"/proc/{pid}/environ", "rb") as environ:
        variables = dict(entry.split(b"=", 1) for entry in environ.read().split(b"\0") if b"=" in entry)
    assert variables[b"MALLOC_CONF"].decode() == JEMALLOC_CONF
