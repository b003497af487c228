"""Octo's text processor without ``transformers``: tokenizer lookup, tokenization, T5 shape.

Upstream ``HFTokenizer`` calls ``AutoTokenizer.from_pretrained(tokenizer_name)`` with
``max_length=16, padding="max_length", truncation=True``. Here the same fast tokenizer is
read from its ``tokenizer.json`` with the ``tokenizers`` library, which gives identical ids.

Where the tokenizer comes from (:func:`resolve_tokenizer`), first hit wins:

1. the user's override (policy option ``?tokenizer=/path/to/folder``),
2. the config's name as a local folder (absolute, or relative to the working directory),
3. a folder of that name inside or next to the checkpoint (``CKPT/tiny_t5``, ``CKPT/../tiny_t5``),
4. the Hugging Face hub or its local cache (``t5-base``), via ``huggingface_hub``.

The T5 *encoder weights* are inside every released Octo checkpoint
(``octo_transformer/task_tokenizers_language/hf_model``), so the encoder's shape is read
from those weights (:func:`t5_config_from_params`) and no hub config is needed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError
from evalharness.policies.octo.config import TextProcessorConfig

__all__ = [
    "T5EncoderConfig",
    "TextTokenizer",
    "TokenizerNotFoundError",
    "read_hf_config",
    "resolve_tokenizer",
    "t5_config_from_params",
]

#: Where the T5 encoder sits in an Octo parameter tree.
T5_PREFIX = "octo_transformer/task_tokenizers_language/hf_model"

# Released configs name hub models by their legacy short names.
_HUB_ALIASES = {
    "t5-base": "google-t5/t5-base",
    "t5-small": "google-t5/t5-small",
    "t5-large": "google-t5/t5-large",
}


class TokenizerNotFoundError(EvalharnessError, FileNotFoundError):
    """No tokenizer could be found for the name in the checkpoint's config."""


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file()


def resolve_tokenizer(
    name: str,
    checkpoint_dir: str | Path | None = None,
    override: str | Path | None = None,
    allow_download: bool = True,
) -> Path:
    """The folder holding ``tokenizer.json`` for ``name`` (see the module docstring's order)."""
    tried: list[str] = []
    if override not in (None, ""):
        folder = Path(str(override)).expanduser()
        if folder.is_file() and folder.name == "tokenizer.json":
            return folder.parent
        if _has_tokenizer(folder):
            return folder
        raise TokenizerNotFoundError(
            f"tokenizer override {str(override)!r} has no tokenizer.json; point ?tokenizer= at a "
            "folder saved by `AutoTokenizer.save_pretrained` (a fast tokenizer)"
        )
    direct = Path(name).expanduser()
    tried.append(str(direct))
    if _has_tokenizer(direct):
        return direct
    if checkpoint_dir is not None:
        base = Path(checkpoint_dir)
        for folder in (base / direct.name, base.parent / direct.name):
            tried.append(str(folder))
            if _has_tokenizer(folder):
                return folder
    hub_error = ""
    if allow_download and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        repo = _HUB_ALIASES.get(name, name)
        # Bare names other than the known aliases are almost always local folders that were
        # not found; ask only the local cache for them instead of retrying the network.
        cache_only = "/" not in repo
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(repo, "tokenizer.json", local_files_only=cache_only))
            return path.parent
        except Exception as exc:  # offline, unknown repo, no huggingface_hub
            where = "Hugging Face cache" if cache_only else "Hugging Face hub"
            hub_error = f"; the {where} ({repo}) failed: {type(exc).__name__}: {str(exc)[:120]}"
    raise TokenizerNotFoundError(
        f"cannot find the tokenizer {name!r} named by the checkpoint's config "
        f"(text_processor.tokenizer_name). Looked in: {', '.join(tried)}{hub_error}. "
        f"Point it at a local folder with tokenizer.json, e.g. policy option "
        f"`?tokenizer=/path/to/{Path(name).name}` (or tokenizer=... in Python)."
    )


class TextTokenizer:
    """Upstream ``HFTokenizer.encode`` with the ``tokenizers`` library.

    ``encode(texts)`` returns ``{"input_ids", "attention_mask"}`` int64 arrays of shape
    (B, max_length): ids truncated to ``max_length`` including the appended ``</s>``, padded
    on the right with the pad id, as ``transformers`` does for ``padding="max_length"``.
    """

    def __init__(self, folder: str | Path, config: TextProcessorConfig) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - in both extras
            raise ImportError(
                "Octo's text processor needs `tokenizers` (pip install tokenizers)"
            ) from exc
        self.folder = Path(folder)
        self.config = config
        path = self.folder / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise TokenizerNotFoundError(f"{path}: not a readable tokenizers file ({exc})") from exc
        pad_token, pad_id = self._pad_token()
        self.pad_id = pad_id
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        if config.truncation:
            self._tokenizer.enable_truncation(max_length=config.max_length)
        self._tokenizer.enable_padding(length=config.max_length, pad_id=pad_id, pad_token=pad_token)

    def _pad_token(self) -> tuple[str, int]:
        token = "<pad>"
        special = self.folder / "special_tokens_map.json"
        if special.is_file():
            try:
                entry = json.loads(special.read_text()).get("pad_token", token)
                token = entry["content"] if isinstance(entry, Mapping) else str(entry)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
        pad_id = self._tokenizer.token_to_id(token)
        if pad_id is None:
            raise TokenizerNotFoundError(
                f"{self.folder}: the tokenizer has no pad token {token!r}; Octo pads instructions to "
                f"max_length={self.config.max_length}"
            )
        return token, int(pad_id)

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids and attention mask, (B, max_length) int64 each."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of instructions, got a single str")
        texts = [str(t) for t in texts]
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(
            len(texts), -1
        )
        if ids.shape[1] != self.max_length:
            # Only without truncation can a long instruction exceed max_length.
            raise ValueError(
                f"an instruction tokenizes to {ids.shape[1]} tokens but the model takes "
                f"{self.max_length}; enable truncation in the config's text_processor"
            )
        return {"input_ids": ids, "attention_mask": mask}


@dataclass(frozen=True)
class T5EncoderConfig:
    """The T5 encoder's shape, as far as Octo needs it (read from the weights)."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    gated: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def activation(self) -> str:
        """``relu`` for T5 (t5-base); ``gelu_new`` (tanh GELU) for gated T5 v1.1."""
        return "gelu_new" if self.gated else "relu"


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return tuple(int(d) for d in value)
    return tuple(int(d) for d in np.shape(value))


def t5_config_from_params(
    flat: Mapping[str, Any],
    prefix: str = T5_PREFIX,
    hf_config: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> T5EncoderConfig:
    """Derive the encoder's config from its weights (``flat``: ``"a/b/c" -> array or shape``).

    ``hf_config`` (a ``config.json`` next to the tokenizer, when there is one) supplies the two
    numbers weights cannot tell: ``relative_attention_max_distance`` and ``layer_norm_epsilon``.
    """
    p = prefix.rstrip("/") + "/"
    sub = {k[len(p) :]: _shape(v) for k, v in flat.items() if k.startswith(p)}
    if not sub:
        raise KeyError(f"{source}: has no T5 encoder weights under {prefix}/")

    def need(key: str) -> tuple[int, ...]:
        if key not in sub:
            raise KeyError(f"{source}: T5 encoder weight {prefix}/{key} is missing")
        return sub[key]

    vocab, d_model = need("shared/embedding")
    inner = need("encoder/block/0/layer/0/SelfAttention/q/kernel")[1]
    buckets, heads = need("encoder/block/0/layer/0/SelfAttention/relative_attention_bias/embedding")
    layers = 1 + max(int(k.split("/")[2]) for k in sub if k.startswith("encoder/block/"))
    gated = "encoder/block/0/layer/1/DenseReluDense/wi_0/kernel" in sub
    wi = "wi_0" if gated else "wi"
    d_ff = need(f"encoder/block/0/layer/1/DenseReluDense/{wi}/kernel")[1]
    if inner % heads:
        raise ValueError(f"{source}: T5 attention width {inner} is not divisible by {heads} heads")
    hf = dict(hf_config or {})
    return T5EncoderConfig(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        num_heads=heads,
        d_ff=d_ff,
        num_layers=layers,
        gated=gated,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
    )


def read_hf_config(folder: str | Path | None) -> dict[str, Any] | None:
    """A Hugging Face ``config.json`` in ``folder``, if there is one (else None)."""
    if folder is None:
        return None
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


#: The files of a Hugging Face tokenizer folder that a saved checkpoint carries along.
TOKENIZER_FILES = (
    "tokenizer.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "spiece.model",
)


def copy_tokenizer(
    tokenizer: TextTokenizer | None, text: TextProcessorConfig | None, directory: Path
) -> None:
    """Copy the tokenizer's files into ``directory/<tokenizer name>`` so that the saved
    checkpoint loads offline (its config names the tokenizer by that folder)."""
    if tokenizer is None or text is None:
        return
    target = directory / Path(text.tokenizer_name).name
    if (target / "tokenizer.json").is_file():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        source = tokenizer.folder / name
        if source.is_file():
            shutil.copyfile(source, target / name)


def instruction_tokenizer(
    has_language: bool,
    text: TextProcessorConfig | None,
    directory: Path,
    override: str | None = None,
) -> TextTokenizer | None:
    """The tokenizer a checkpoint's language-conditioned model needs (None without language),
    found by :func:`resolve_tokenizer` (``?tokenizer=`` override, the config's name, folders
    beside ``directory``, the hub)."""
    if not has_language:
        return None
    if text is None:
        raise ValueError(
            f"{directory / 'config.json'}: the model has a language tokenizer but "
            "text_processor is null; evalharness cannot tokenize instructions for it"
        )
    return TextTokenizer(resolve_tokenizer(text.tokenizer_name, directory, override), text)
