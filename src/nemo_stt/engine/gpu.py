"""What the batched forward does differently on a CUDA device; on the CPU every part of it is a no-op but
the encoder's bf16 autocast that CPU_AUTOCAST chooses.

- The encoder runs under bf16 autocast when the device supports bf16 (GPU_AUTOCAST=off keeps fp32). On
  the CPU, CPU_AUTOCAST=auto chooses it where it pays: a CPU that computes bf16 natively (AVX512_BF16 or
  AMX; others convert and gain little) and an encoder large enough for its forward to be matrix work;
  `bf16` asks for it wherever oneDNN has bf16 kernels, `off` keeps fp32 as NeMo runs it on the CPU.
  The weights of its matrix products (linear and convolution layers, which autocast runs in bf16) are
  then kept in bf16 (`cast_matrix_weights`), unless the model streams cache-aware (its streaming step
  runs in fp32): autocast would otherwise convert them all again at every forward, which at batch 1
  costs as much as the products themselves. Its output is cast back to fp32: the preprocessor, the
  decoders' heads and NeMo's greedy decoding (which turns autocast off itself around its CUDA graphs)
  run in fp32, as in NeMo.
- Batch tensors go from pinned host memory to the device with non-blocking copies.
- Each inference loop (a batcher thread) runs its forwards on its own CUDA stream, so that one loop's
  host work (padding, turning hypotheses into words) overlaps another's kernels; the stream is
  synchronised before results are read and before the shared decoding buffers are handed on.
"""

import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

AUTOCAST_CHOICES = ("bf16", "off")
CPU_AUTOCAST_CHOICES = ("auto", "bf16", "off")
CPU_AUTO_BF16_MIN_PARAMETERS = 100_000_000
"""CPU_AUTOCAST=auto's smallest encoder for bf16: below, a forward is not mostly matrix products and the
casts take back what bf16 saves (the README's "bf16 on the CPU" gives the measurements)."""


def autocast_dtype(device: torch.device | str, setting: str, bf16_supported: bool,
                   cpu_setting: str = "off") -> torch.dtype | None:
    """The encoder's autocast dtype: bf16 on a CUDA device that supports it unless `setting` is "off", on
    a CPU that supports it if `cpu_setting` is "bf16" (CPU_AUTOCAST=auto resolved by `cpu_autocast`);
    None (fp32, no autocast) everywhere else."""
    for name, value, choices in (("GPU_AUTOCAST", setting, AUTOCAST_CHOICES),
                                 ("CPU_AUTOCAST", cpu_setting, CPU_AUTOCAST_CHOICES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    kind = torch.device(device).type
    wanted = setting if kind == "cuda" else cpu_setting if kind == "cpu" else "off"
    return torch.bfloat16 if wanted == "bf16" and bf16_supported else None


def cpu_autocast(setting: str, native_bf16: bool, encoder_parameters: int) -> str:
    """CPU_AUTOCAST with "auto" resolved: "bf16" for an encoder of CPU_AUTO_BF16_MIN_PARAMETERS or more on
    a CPU with native bf16 arithmetic, "off" otherwise; "bf16" and "off" as they are."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16 and encoder_parameters >= CPU_AUTO_BF16_MIN_PARAMETERS else "off"


def native_bf16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 arithmetic instructions (AVX512_BF16 or AMX-BF16), from the flags of
    /proc/cpuinfo (or of `cpuinfo`, its text); False where they cannot be read. oneDNN's own query
    (`bf16_supported`) also says yes for AVX-512 CPUs that convert bf16 to fp32 to compute."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_supported(device: torch.device) -> bool:
    """Whether the device computes in bf16: a CUDA device from Ampere on; a CPU on which oneDNN has bf16
    kernels (AVX-512 and later; without AVX512_BF16 or AMX they convert, and gain less)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cast_matrix_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Keep the weights and biases of `module`'s linear and convolution layers in `dtype`: the layers that
    autocast to `dtype` runs in it, so that their weights are not converted at every call. Norms and
    everything else stay as they are; the layers then work only under that autocast."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            layer.to(dtype)


class DevicePath:
    """The device-dependent parts of a forward: host-to-device copies, the encoder's autocast, the
    calling thread's stream."""

    def __init__(self, device: torch.device | str, autocast: torch.dtype | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.autocast = autocast
        """dtype of the encoder's autocast, None for none (see `autocast_dtype`)."""
        self.pinned = self.cuda
        """Whether batch tensors are copied from pinned host memory, without blocking."""
        self._local = threading.local()

    @classmethod
    def for_device(cls, device: torch.device | str, setting: str = "bf16", cpu_setting: str = "off") -> "DevicePath":
        device = torch.device(device)
        wanted = autocast_dtype(device, setting, True, cpu_setting)
        # Support is asked only where autocast is wanted: CUDA's query needs a CUDA device.
        return cls(device, wanted if wanted is not None and bf16_supported(device) else None)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.pinned:
            return tensor.to(self.device)
        # The copy runs on the current (the loop's) stream; the host tensor lives until that stream is
        # synchronised at the end of the forward.
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def encoder_autocast(self) -> AbstractContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def loop_stream(self) -> AbstractContextManager:
        """The calling thread's own CUDA stream as the current stream (made on its first forward)."""
        if not self.cuda:
            return nullcontext()
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return torch.cuda.stream(stream)

    def synchronize(self) -> None:
        """Wait for the work queued on the current stream (nothing to wait for on the CPU)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def describe(self) -> str:
        """For the start-up log."""
        precision = f"{str(self.autocast).removeprefix('torch.')} autocast" if self.autocast else "fp32"
        if not self.cuda:
            return f"encoder {precision}" if self.autocast else "fp32"
        return f"encoder {precision}, pinned host memory, one CUDA stream per inference loop"
