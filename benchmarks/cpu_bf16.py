"""The encoder's forward on the CPU in fp32 and under the bf16 autocast of CPU_AUTOCAST=bf16, in one run.

    python benchmarks/make_replicas.py parakeet-tdt-0.6b-v2
    python benchmarks/cpu_bf16.py --model build/replicas/parakeet-tdt-0.6b-v2.nemo
    python benchmarks/cpu_bf16.py                      # the demo model

For each batch size, the same features (random audio of `--seconds`) go through the encoder in fp32 and
under the engine's autocast (`DevicePath.encoder_autocast`), alternated `--rounds` times after one warm-up
each; prints the best time of each, their ratio, and how far the bf16 output is from the fp32 one
(relative L2 distance, largest absolute difference). What bf16 does to texts is measured on the demo
model's held-out set by `onnx_accuracy.py --encoders torch,torch-bf16`.
"""

import argparse
import logging
import time

import torch


def forward_seconds(encoder, features, lengths, autocast) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    with autocast():
        encoded, _ = encoder(audio_signal=features, length=lengths)
    return time.perf_counter() - started, encoded.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path; unset: the demo model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from nemo.collections.asr.models import ASRModel
    from nemo.utils import logging as nemo_logging

    from nemo_stt.engine import demo_model_path
    from nemo_stt.engine.gpu import DevicePath, bf16_supported

    nemo_logging.setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    if not bf16_supported(torch.device("cpu")):
        raise SystemExit("this CPU has no bf16 kernels in oneDNN: CPU_AUTOCAST=bf16 would run fp32")
    model = ASRModel.restore_from(args.model or str(demo_model_path()), map_location="cpu").eval()
    fp32, bf16 = DevicePath("cpu"), DevicePath("cpu", torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.model or 'demo model'}: {parameters:.1f} M parameters, {args.threads} threads, {args.seconds:g} s "
          f"per item, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            audio = 0.1 * torch.randn(batch, round(16000 * args.seconds), generator=generator)
            features, lengths = model.preprocessor(input_signal=audio, length=torch.full((batch,), audio.shape[1]))
            times = {"fp32": [], "bf16": []}
            outputs = {}
            for round_ in range(args.rounds + 1):  # round 0 warms both up
                for name, path in (("fp32", fp32), ("bf16", bf16)):
                    seconds, outputs[name] = forward_seconds(model.encoder, features, lengths, path.encoder_autocast)
                    if round_:
                        times[name].append(seconds)
            best = {name: min(values) for name, values in times.items()}
            distance = ((outputs["bf16"] - outputs["fp32"]).norm() / outputs["fp32"].norm()).item()
            largest = (outputs["bf16"] - outputs["fp32"]).abs().max().item()
            print(f"batch {batch:3}: fp32 {best['fp32']:.3f} s, bf16 {best['bf16']:.3f} s: "
                  f"{best['fp32'] / best['bf16']:.2f}x; bf16 output at {100 * distance:.2f} % of fp32's norm "
                  f"(largest difference {largest:.3f})", flush=True)


if __name__ == "__main__":
    main()
