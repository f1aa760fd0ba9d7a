"""Speed accounting: model FLOPs per token against a hand count, device peaks, MFU, the precision choice and the
launcher command that gives every GPU its own process."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import REPO
from zhpretrain import config
from zhpretrain.run import launch
from zhpretrain.train import speed
from zhpretrain.errors import UserError


def demo_model(**overrides):
    c = AutoConfig.from_pretrained(REPO / "configs/models/qwen2-demo.json", **overrides)
    return AutoModelForCausalLM.from_config(c)


# qwen2-demo.json by hand: hidden 128, MLP 384, 4 layers of 4 heads of 32, vocabulary 4096.
PER_LAYER = 4 * 128 * 128 + 3 * 128 + 3 * 128 * 384 + 2 * 128  # q k v o, the q k v biases, gate up down, two norms
BODY = 4 * PER_LAYER + 128  # and the final norm
VOCAB = 4096 * 128


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_is_palms_6n_plus_attention_counted_by_hand(tied):
    model = demo_model(tie_word_embeddings=tied)
    # The output layer multiplies every token whether or not it shares its weight with the input lookup; the lookup
    # itself is no multiply. So both count BODY + VOCAB.
    assert speed.matmul_parameters(model) == BODY + VOCAB
    assert speed.flops_per_token(model, 256) == 6 * (BODY + VOCAB) + 12 * 4 * 4 * 32 * 256


def test_gpu_peaks_come_from_the_table_by_name_and_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert speed.peak_flops(torch.device("cuda"), "bf16")[0] == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert speed.peak_flops(torch.device("cuda"), "tf32")[0] == 378e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    assert speed.peak_flops(torch.device("cuda"), "bf16") == (None, "Tesla V100-SXM2-32GB has no bf16 tensor cores")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    peak, why = speed.peak_flops(torch.device("cuda"), "bf16")
    assert peak is None and "--peak_tflops" in why
    assert speed.peak_flops(torch.device("cuda"), "bf16", override_tflops=123.0) == (123e12, "--peak_tflops")


def test_a_cpu_has_no_peak_unless_given():
    """A matmul timed at start-up measured the load, not the CPU (0.05 TFLOPS in one launch, 0.21 in the next): no MFU
    on a CPU without --peak_tflops."""
    peak, source = speed.peak_flops(torch.device("cpu"), "fp32")
    assert peak is None and "--peak_tflops" in source
    assert speed.peak_flops(torch.device("cpu"), "fp32", override_tflops=0.5) == (0.5e12, "--peak_tflops")


def test_mfu_is_model_flops_over_the_peak_of_all_devices(monkeypatch):
    monkeypatch.setattr(speed, "_peak_too_low", False)
    assert speed.mfu(1e9, 3e4, 100e12, 2) == pytest.approx(1e9 * 3e4 / 200e12)
    assert speed.mfu(1e9, 3e4, None, 1) is None


def test_mfu_above_100_percent_is_never_logged_and_said_once(monkeypatch, capsys):
    monkeypatch.setattr(speed, "_peak_too_low", False)
    assert speed.mfu(1e9, 3e4, 100e12, 1) == pytest.approx(0.3)
    assert speed.mfu(1e9, 3e5, 100e12, 1) is None  # 300%: the peak is wrong
    assert speed.mfu(1e9, 3e4, 100e12, 1) is None  # and so is every later figure measured against it
    out = capsys.readouterr().out
    assert out.count("MFU would be 300%") == 1 and "no MFU is logged" in out


def test_bf16_only_where_native_else_fp16_and_fp32_on_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.precision(True, False) == (False, False)
    assert "no GPU: training in fp32" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    # Emulated bf16 counts as supported by default: the choice must not be fooled by it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert config.precision(True, False) == (False, True)
    assert "Tesla T4 has no native bf16: training in fp16 with loss scaling" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert config.precision(True, False) == (True, False)
    assert config.precision(False, False) == (False, False)


def test_the_launcher_starts_one_process_per_gpu_and_never_under_a_launcher(monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch.command("auto", []) is None  # a CPU: one process trains itself
    cmd = launch.command("2", ["configs/demo.yaml", "--max_steps", "5"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[-3:] == ["configs/demo.yaml", "--max_steps", "5"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.command("auto", [])[4] == "--nproc_per_node=4"
    assert launch.command("1", [])[4] == "--nproc_per_node=1"  # one of four GPUs, never DataParallel over all
    with pytest.raises(UserError, match="more processes than the 4 GPUs"):
        launch.command("8", [])
    with pytest.raises(UserError, match="auto or a whole number"):
        launch.command("two", [])
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.command("auto", []) is None
