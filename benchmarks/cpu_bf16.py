"""The encoder's forward on the CPU in fp32 and in bf16 as CPU_AUTOCAST runs it, in one run.

    python benchmarks/make_replicas.py parakeet-tdt-0.6b-v2
    python benchmarks/cpu_bf16.py --model build/replicas/parakeet-tdt-0.6b-v2.nemo
    python benchmarks/cpu_bf16.py                      # the demo model

For each batch size, the same features (random audio of `--seconds`) go through the encoder three ways,
alternated `--rounds` times after one warm-up each: in fp32; under bf16 autocast with the weights in fp32
(autocast converts them at every forward); under bf16 autocast with the linear and convolution weights
kept in bf16, as the engine runs it (`cast_matrix_weights`; for models that stream cache-aware the engine
keeps the second way). Prints the best time of each, the ratios to fp32, and how far each bf16 output is
from the fp32 one (relative L2 distance). What bf16 does to texts is measured on the demo model's
held-out set by `onnx_accuracy.py --encoders torch,torch-bf16`.
"""

import argparse
import copy
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
    from nemo_stt.engine.gpu import DevicePath, bf16_supported, cast_matrix_weights, native_bf16_cpu

    nemo_logging.setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    if not bf16_supported(torch.device("cpu")):
        raise SystemExit("this CPU has no bf16 kernels in oneDNN: CPU_AUTOCAST=bf16 would run fp32")
    model = ASRModel.restore_from(args.model or str(demo_model_path()), map_location="cpu").eval()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    encoder_parameters = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    print(f"{args.model or 'demo model'}: {parameters:.1f} M parameters ({encoder_parameters:.1f} M in the encoder), "
          f"{args.threads} threads, {args.seconds:g} s per item, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16_cpu()}")
    bf16_weights = copy.deepcopy(model.encoder)
    cast_matrix_weights(bf16_weights, torch.bfloat16)
    fp32, bf16 = DevicePath("cpu"), DevicePath("cpu", torch.bfloat16)
    ways = {"fp32": (model.encoder, fp32), "autocast": (model.encoder, bf16), "bf16 weights": (bf16_weights, bf16)}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            audio = 0.1 * torch.randn(batch, round(16000 * args.seconds), generator=generator)
            features, lengths = model.preprocessor(input_signal=audio, length=torch.full((batch,), audio.shape[1]))
            times = {name: [] for name in ways}
            outputs = {}
            for round_ in range(args.rounds + 1):  # round 0 warms each up
                for name, (encoder, path) in ways.items():
                    seconds, outputs[name] = forward_seconds(encoder, features, lengths, path.encoder_autocast)
                    if round_:
                        times[name].append(seconds)
            best = {name: min(values) for name, values in times.items()}
            figures = []
            for name in ("autocast", "bf16 weights"):
                distance = ((outputs[name] - outputs["fp32"]).norm() / outputs["fp32"].norm()).item()
                figures.append(f"{name} {best[name]:.3f} s: {best['fp32'] / best[name]:.2f}x, output at "
                               f"{100 * distance:.2f} % of fp32's")
            print(f"batch {batch:3}: fp32 {best['fp32']:.3f} s; " + "; ".join(figures), flush=True)


if __name__ == "__main__":
    main()
