"""`to_dpo_config` gives TRL a DPOConfig it accepts on every kind of machine: "auto" resolved as the course resolves it.

Each case builds a real trl.DPOConfig (TrainingArguments checks the precision against the hardware when it is
made) with the hardware probes set to that machine's answers.
"""
import pytest
import torch

trl = pytest.importorskip("trl")

from dpo_edu.train import TrainConfig  # noqa: E402
from dpo_edu.trl_bridge import to_dpo_config  # noqa: E402


@pytest.fixture(autouse=True)
def no_pretended_gpu_left_behind():
    """A DPOConfig sets up accelerate's process-wide PartialState on its device, and transformers caches whether the
    GPU has bf16: neither may carry a pretended machine from one test (or into a later Accelerator) to another."""
    from accelerate.state import AcceleratorState
    from transformers.utils.import_utils import is_torch_bf16_gpu_available

    is_torch_bf16_gpu_available.cache_clear()
    yield
    is_torch_bf16_gpu_available.cache_clear()
    AcceleratorState._reset_state(reset_partial_state=True)


def machine(monkeypatch, *, gpu: bool, gpu_bf16: bool = False, cpu_bf16: bool = False) -> None:
    """The probes of a machine with or without a GPU (one with bf16, or a T4's emulated bf16), and its CPU's bf16."""
    monkeypatch.delenv("DPO_EDU_DEVICE", raising=False)
    monkeypatch.setenv("DPO_EDU_CPU_BF16", "1" if cpu_bf16 else "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(gpu))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)  # TrainingArguments selects the pretended GPU
    # a T4 says yes when emulation counts (torch's default, what TRL asks), no for hardware (what the course asks)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu_bf16 or including_emulation)


@pytest.mark.parametrize("kind, probes, expected", [
    ("CPU without bf16", dict(gpu=False), dict(bf16=False, fp16=False, use_cpu=True)),
    # TRL refused this one: "Your setup doesn't support bf16/gpu. You need to assign use_cpu ..."
    ("CPU with bf16", dict(gpu=False, cpu_bf16=True), dict(bf16=True, fp16=False, use_cpu=True)),
    ("GPU with bf16", dict(gpu=True, gpu_bf16=True), dict(bf16=True, fp16=False, use_cpu=False)),
    ("GPU without bf16 (T4)", dict(gpu=True), dict(bf16=False, fp16=True, use_cpu=False)),
])
def test_auto_precision_gives_a_config_trl_accepts(monkeypatch, tmp_path, kind, probes, expected):
    machine(monkeypatch, **probes)
    config = to_dpo_config(TrainConfig(), tmp_path, report_to=[])  # mixed_precision="auto"
    assert isinstance(config, trl.DPOConfig)
    assert {name: getattr(config, name) for name in expected} == expected, kind


def test_an_explicit_precision_is_kept_and_float32_is_float32_everywhere(monkeypatch, tmp_path):
    machine(monkeypatch, gpu=False, cpu_bf16=False)  # bf16 asked for on a CPU without it: emulated, but what was asked
    config = to_dpo_config(TrainConfig(mixed_precision="bf16"), tmp_path, report_to=[])
    assert (config.bf16, config.fp16, config.use_cpu) == (True, False, True)
    machine(monkeypatch, gpu=True, gpu_bf16=True)
    config = to_dpo_config(TrainConfig(mixed_precision="fp32"), tmp_path, report_to=[])
    assert (config.bf16, config.fp16, config.use_cpu) == (False, False, False)
