from nemo_stt.allocator import JEMALLOC_CONF

from .conftest import run_in_fresh_process

# Resident MB before a 120-s forward, right after it, and once the engine has been idle.
_IDLE_RELEASE_PROBE = """
import time
import numpy as np
from nemo_stt.engine import BatchPolicy, Engine, EngineConfig
from nemo_stt.engine.memory import ALLOCATOR

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 2**20

engine = Engine(EngineConfig(device="cpu", num_threads=2, batching=BatchPolicy(release_after_idle=0.5)))
noise = (np.random.default_rng(0).standard_normal(16000 * 120) * 0.1).astype(np.float32)
before = resident_mb()
engine.transcribe(noise)
after_work = resident_mb()
time.sleep(1.5)
print(ALLOCATOR, before, after_work, resident_mb())
"""


def test_an_idle_engine_hands_its_free_pages_back_under_jemalloc():
    # How the service runs by default: jemalloc keeps freed pages for the next forwards until idle.
    jemalloc = {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": JEMALLOC_CONF}
    printed = run_in_fresh_process(_IDLE_RELEASE_PROBE, jemalloc)
    allocator, before, after_work, after_idle = printed[-4:]
    before, after_work, after_idle = int(before), int(after_work), int(after_idle)
    assert allocator == "jemalloc"
    assert after_work - before > 150  # the forward's pages were kept...
    assert after_idle - before < (after_work - before) / 3  # ...and given back once idle
