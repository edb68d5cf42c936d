import pytest
import torch

from dpo_edu.config import PROFILES, get_profile
from dpo_edu.precision import autocast_dtype
from dpo_edu.utils import get_device, seed_everything, versions


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("DPO_EDU_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    monkeypatch.delenv("DPO_EDU_PROFILE")
    assert get_profile().name == "full"
    assert get_profile(" Smoke ").name == "smoke"


def test_unknown_profile_names_the_allowed_values(monkeypatch):
    monkeypatch.setenv("DPO_EDU_PROFILE", "huge")
    with pytest.raises(ValueError, match=r"'huge' \(from \$DPO_EDU_PROFILE\); allowed: full, smoke"):
        get_profile()


def test_profiles_share_fields_and_smoke_is_not_larger():
    smoke, full = PROFILES["smoke"], PROFILES["full"]
    for field in ("bt_comparisons", "policy_optimizer_steps", "gradient_check_batches"):
        assert getattr(smoke, field) <= getattr(full, field)


def test_device_override_and_default(monkeypatch):
    monkeypatch.delenv("DPO_EDU_DEVICE", raising=False)
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("DPO_EDU_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.delenv("DPO_EDU_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert get_device().type == expected
    from dpo_edu.precision import cpu_bf16_supported

    assert autocast_dtype(torch.device("cpu")) is (torch.bfloat16 if cpu_bf16_supported() else None)


def test_seed_everything_repeats():
    seed_everything(3)
    first = torch.randn(5)
    generator = seed_everything(3)
    assert torch.equal(first, torch.randn(5))
    assert torch.equal(torch.randn(3, generator=generator), torch.randn(3, generator=torch.Generator().manual_seed(3)))


def test_versions_lists_core_packages():
    found = versions()
    assert found["torch"].startswith("2.") and "python" in found


def test_unavailable_device_override_fails_early(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'cuda' \(from argument\) is not available here; usable: cpu"):
        get_device("cuda")


def test_autocast_ignores_emulated_bf16(monkeypatch):
    """A T4 emulates bf16: the course must pick fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "GPU0", ""])
def test_unknown_device_name_is_one_clear_error(monkeypatch, name):
    monkeypatch.setenv("DPO_EDU_DEVICE", name or " ")
    with pytest.raises(ValueError, match=r"^device '.*' \(from \$DPO_EDU_DEVICE\) is not a device name; accepted: cpu, cuda, cuda:N, mps \(usable here: cpu[^\n]*\)$"):
        get_device()


def test_cuda_index_beyond_the_devices_fails_early(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:3' \(from argument\) is not available here; usable: cpu, cuda \(cuda:0\)$"):
        get_device("cuda:3")


def test_cpu_bf16_follows_the_hardware_probes(monkeypatch):
    """bf16 autocast on a CPU pays off only with AVX512-BF16 or AMX; an AVX2-only CPU emulates it, many times slower."""
    import torch

    from dpo_edu.precision import cpu_bf16_supported

    monkeypatch.delenv("DPO_EDU_CPU_BF16", raising=False)  # the hardware's answer, not a forced one
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value, raising=False)
        assert cpu_bf16_supported() is expected


@pytest.mark.parametrize("setting, bf16", [("1", True), ("0", False)])
def test_cpu_bf16_can_be_forced_either_way_to_test_the_other_path(monkeypatch, setting, bf16):
    """$DPO_EDU_CPU_BF16 overrides the probes, so "auto" takes the path of the other kind of CPU."""
    from dpo_edu.precision import accelerate_mixed_precision, cpu_bf16_supported, precision_dtype

    monkeypatch.setenv("DPO_EDU_CPU_BF16", setting)
    cpu = torch.device("cpu")
    for hardware in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: hardware, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: hardware, raising=False)
        assert cpu_bf16_supported() is bf16
        assert precision_dtype(cpu, "auto") is (torch.bfloat16 if bf16 else None)
        assert accelerate_mixed_precision("auto", cpu) == ("bf16" if bf16 else "no")
    monkeypatch.setenv("DPO_EDU_CPU_BF16", "")  # empty: as if unset, the probes decide (the last ones said no)
    assert cpu_bf16_supported() is False


@pytest.mark.parametrize("value", ["yes", "true", "2", " 1", "bf16"])
def test_a_bad_cpu_bf16_setting_fails_in_one_line_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("DPO_EDU_CPU_BF16", value)
    with pytest.raises(ValueError, match=r"^\$DPO_EDU_CPU_BF16 is '[^']*': set it to 1 \(behave as a CPU with bf16\), "
                                         r"0 \(as one without\), or unset it \(probe the hardware\)$"):
        autocast_dtype(torch.device("cpu"))


def test_staged_writes_are_whole_and_readable_like_any_user_file(tmp_path):
    """A fault: `staged` once used mkstemp/mkdtemp, whose 0600/0700 modes made a run's files readable only by their owner."""
    import os

    from dpo_edu.utils import staged

    umask = os.umask(0o022)
    os.umask(umask)
    with staged(tmp_path / "pairs.jsonl") as temporary:
        temporary.write_text("{}\n")
    with staged(tmp_path / "policy", folder=True) as temporary:
        (temporary / "config.json").write_text("{}")
    assert (tmp_path / "pairs.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "policy").stat().st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(RuntimeError), staged(tmp_path / "pairs.jsonl") as temporary:
        temporary.write_text("half")
        raise RuntimeError
    assert (tmp_path / "pairs.jsonl").read_text() == "{}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pairs.jsonl", "policy"]  # no temporary left
