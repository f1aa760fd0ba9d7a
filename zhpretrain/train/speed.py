"""How fast training runs against what the hardware could do: model FLOPs per token, the device's peak, and MFU."""
import torch

# Dense (no 2:4 sparsity) peak tensor throughput in TFLOPS from the vendors' datasheets: (bf16, fp16, tf32, fp32).
# GeForce cards are listed at their rate with fp32 accumulation, which is what training uses. None: not supported.
# The first name found in torch.cuda.get_device_name() wins, so the more specific names come first.
GPU_PEAK_TFLOPS = {
    "B200": (2250, 2250, 1100, 80),
    "H100 PCIe": (756, 756, 378, 51),
    "H100 NVL": (835, 835, 418, 60),
    "H100": (989, 989, 495, 67),  # SXM; the H800 and H200 have the same compute
    "H800": (989, 989, 495, 67),
    "H200": (989, 989, 495, 67),
    "H20": (148, 148, 74, 44),
    "A100": (312, 312, 156, 19.5),
    "A800": (312, 312, 156, 19.5),
    "L40S": (362, 362, 183, 91.6),
    "L40": (181, 181, 90.5, 90.5),
    "L4": (121, 121, 60, 30.3),
    "A10": (125, 125, 62.5, 31.2),
    "A6000": (155, 155, 77.4, 38.7),
    "4090": (165, 165, 82.6, 82.6),
    "3090": (71, 71, 35.6, 35.6),
    "V100": (None, 125, None, 15.7),
    "T4": (None, 65, None, 8.1),
}


def matmul_parameters(model) -> int:
    """Parameters that take part in a matrix multiply per token: all but the input embedding (a lookup), except when it is
    tied to the output layer, whose multiply it then is."""
    from ..model.build import numel

    total = sum(numel(p) for p in model.parameters())  # a tied weight is counted once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total if tied else total - numel(embedding)


def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token, as in the PaLM paper's appendix B: 6N for the weight multiplies (2 forward, 4 backward)
    plus 12·L·H·Q·T for the attention scores and their use (T = block_size, H heads of size Q, L layers). The attention
    term counts the whole T×T square, as PaLM does, although a causal mask needs half of it: MFU stays comparable
    with published figures, and says nothing about whether the kernel skips the masked half."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 6 * matmul_parameters(model) + 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * block_size


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device at this precision, where the figure comes from); (None, why) when unknown.

    precision is bf16, fp16, tf32 or fp32 (tf32: fp32 training with TF32 matmuls allowed)."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                value = peaks[("bf16", "fp16", "tf32", "fp32").index(precision)]
                if value is None:
                    return None, f"{name} has no {precision} tensor cores"
                return value * 1e12, f"{name} datasheet, {precision} dense"
        return None, f"{name} is not in the peak table (zhpretrain/train/speed.py): give --peak_tflops"
    if device.type == "cpu":
        # No datasheet peak to look up (cores, clocks and vector units vary), and a matmul timed at start-up measures the
        # load of that moment: 0.05 TFLOPS in one launch, 0.21 in the next, and MFU "260%" once the load dropped.
        return None, "a CPU has no datasheet peak: give --peak_tflops to log MFU"
    return None, f"no peak known for {device.type}: give --peak_tflops"


_peak_too_low = False  # set once MFU came out above 100%: the peak is wrong, so no later MFU means anything


def mfu(flops_token: float, tokens_per_second: float, peak: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: the share of the devices' peak that the model's own arithmetic uses. None when the peak
    is unknown, or once a value above 100% has shown the peak to be wrong (said once, then MFU is no longer logged)."""
    global _peak_too_low
    if not peak or _peak_too_low:
        return None
    value = flops_token * tokens_per_second / (peak * devices)
    if value > 1:
        from ..report.console import write

        _peak_too_low = True
        write(f"speed: MFU would be {value:.0%}, which is impossible: the peak of {peak / 1e12:,.3g} TFLOPS per device is "
              "too low (check --peak_tflops); no MFU is logged from here on")
        return None
    return value


def hardware(model, block_size: int, training_args, peak_tflops: float | None, main_process: bool):
    """(model FLOPs per token, the peak FLOP/s of one device, or None): what MFU is measured against."""
    device = training_args.device
    precision = ("bf16" if training_args.bf16 else "fp16" if training_args.fp16 else
                 "tf32" if device.type == "cuda" and training_args.tf32 else "fp32")
    flops = flops_per_token(model, block_size)
    peak, source = peak_flops(device, precision, peak_tflops)
    if main_process:
        print(f"speed: {flops / 1e6:,.1f} MFLOPs per token; peak " +
              (f"{peak / 1e12:,.2f} TFLOPS per device ({source})" if peak else f"unknown ({source}): no MFU logged"), flush=True)
    return flops, peak
