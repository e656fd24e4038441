"""Full vs local attention on long inputs: time and peak memory of one forward, by input length.

    python benchmarks/make_benchmark_model.py --out build/bench-full.nemo --full-context
    python benchmarks/attention.py --model build/bench-full.nemo

Each measurement runs in a process of its own (peak RSS is per process): load the model, switch
to local attention (`rel_pos_local_attn`, 128 frames each side) or not, transcribe the input once.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def measure_one(spec: dict) -> None:
    import numpy as np
    import torch

    from nemo_stt.engine.decoding import configure_decoding, select_decoder
    from nemo_stt.engine.model_loading import load_asr_model
    from nemo_stt.engine.transcriber import Transcriber

    torch.set_num_threads(2)
    model = load_asr_model(spec["model"], torch.device("cpu"))
    if spec["local"]:
        model.change_attention_model("rel_pos_local_attn", [128, 128])
    decoder = select_decoder(model, None)
    configure_decoding(model, decoder)
    transcriber = Transcriber(model, decoder)
    audio = (np.random.default_rng(0).standard_normal(int(spec["seconds"] * 16000)) * 0.05).astype(np.float32)
    started = time.perf_counter()
    transcriber.transcribe_batch([audio])
    print(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a full-context .nemo")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 30, 60, 120, 240, 480])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure_one(json.loads(args.one))
        return
    print(f"{'input':>8} | {'full: s':>8} {'MB':>6} | {'local: s':>8} {'MB':>6}")
    for seconds in args.seconds:
        row = []
        for local in (False, True):
            spec = json.dumps({"model": args.model, "seconds": seconds, "local": local})
            process = subprocess.Popen([sys.executable, __file__, "--one", spec], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            row += [float(output.strip().splitlines()[-1]) if status == 0 else float("nan"), usage.ru_maxrss / 1024]
        print(f"{seconds:7.0f}s | {row[0]:8.2f} {row[1]:6.0f} | {row[2]:8.2f} {row[3]:6.0f}")


if __name__ == "__main__":
    main()
