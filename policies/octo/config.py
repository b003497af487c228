"""The Octo model config as validated, frozen dataclasses (no JAX, no torch).

An Octo checkpoint's ``config.json["model"]`` is a tree of upstream ``ModuleSpec`` dicts
(``{"module": ..., "name": ..., "args": [], "kwargs": {...}}``). :func:`parse_model_config`
turns it into the dataclasses below, filling every field upstream leaves to its class
defaults (checked against ``octo-models/octo`` @ 241fb35: ``tokenizers.py``,
``vit_encoders.py``, ``action_heads.py``, ``octo_module.py``, ``transformer.py``,
``text_processing.py``). Both Octo families build their networks from these objects, never
from the raw dicts, so a typo in a config is reported once, here, with the key and value::

    cfg = OctoConfig.from_checkpoint_config(json.load(open("config.json")), source="config.json")
    cfg.model.heads[0][1].action_horizon      # 4
    cfg.model.observation_tokenizer("primary").encoder.num_features

Dict-valued fields are kept as tuples of ``(name, value)`` pairs in the config's order:
the order of tokenizers is the order of tokens in the transformer sequence, and tuples keep
the configs hashable (Flax modules and ``jax.jit`` static arguments need that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from evalharness.errors import EvalharnessError

__all__ = [
    "ConfigError",
    "ContinuousHeadConfig",
    "DiffusionHeadConfig",
    "HeadConfig",
    "ImageEncoderConfig",
    "ImageTokenizerConfig",
    "LanguageTokenizerConfig",
    "LowdimObsTokenizerConfig",
    "OctoConfig",
    "OctoModelConfig",
    "TextProcessorConfig",
    "TokenizerConfig",
    "TransformerConfig",
    "parse_model_config",
]

TOKENIZERS_MODULE = "octo.model.components.tokenizers"
ENCODERS_MODULE = "octo.model.components.vit_encoders"
HEADS_MODULE = "octo.model.components.action_heads"
TEXT_MODULE = "octo.data.utils.text_processing"


class ConfigError(EvalharnessError, ValueError):
    """An Octo config entry that is missing, malformed or names something unsupported."""


# --------------------------------------------------------------------------------------------
# image encoders (vit_encoders.py)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """``SmallStem`` / ``SmallStem16`` / ``SmallStem32`` / ``PatchEncoder``.

    SmallStem: for each stage a weight-standardized 3×3 conv (stride 2, padding 1) →
    GroupNorm(32) → ReLU, then a ``patch_size // 16`` patchifying conv named ``embedding``.
    PatchEncoder: only the ``embedding`` conv with kernel = stride = ``patch_size``.
    """

    kind: str = "SmallStem16"
    patch_size: int = 16
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 3)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    features: tuple[int, ...] = (32, 96, 192, 384)
    padding: tuple[int, ...] = (1, 1, 1, 1)
    num_features: int = 512
    img_norm_type: str = "default"
    use_film: bool = False

    def __post_init__(self) -> None:
        stages = {len(self.kernel_sizes), len(self.strides), len(self.features), len(self.padding)}
        if self.kind != "PatchEncoder" and len(stages) != 1:
            raise ConfigError(
                f"{self.kind}: kernel_sizes, strides, features and padding must have one entry "
                f"per stage; got lengths {len(self.kernel_sizes)}, {len(self.strides)}, "
                f"{len(self.features)}, {len(self.padding)}"
            )
        if self.img_norm_type not in ("default", "imagenet"):
            raise ConfigError(
                f"{self.kind}.img_norm_type={self.img_norm_type!r}; expected 'default' or 'imagenet'"
            )
        if self.use_film:
            raise ConfigError(
                f"{self.kind}.use_film=True (FiLM conditioning) is not supported by evalharness; "
                "released Octo checkpoints do not use it"
            )
        if self.kind != "PatchEncoder" and self.patch_size < 16:
            raise ConfigError(f"{self.kind}.patch_size={self.patch_size} must be >= 16")

    @property
    def downsample(self) -> int:
        """Input pixels per output token along each axis."""
        if self.kind == "PatchEncoder":
            return self.patch_size
        stem = 1
        for s in self.strides:
            stem *= s
        return stem * (self.patch_size // 16)

    def num_tokens(self, height: int, width: int) -> int:
        """Tokens produced for an image of this size (the patch grid)."""
        return self._grid(height) * self._grid(width)

    def _grid(self, size: int) -> int:
        if self.kind == "PatchEncoder":
            return (size - self.patch_size) // self.patch_size + 1
        for k, s, p in zip(self.kernel_sizes, self.strides, self.padding, strict=True):
            size = (size + 2 * p - k) // s + 1
        patch = self.patch_size // 16
        return (size - patch) // patch + 1


_ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "SmallStem": {"patch_size": 32},
    "SmallStem16": {"patch_size": 16},
    "SmallStem32": {"patch_size": 32},
    "PatchEncoder": {"patch_size": 32},
}
_PATCH_ENCODER_FIELDS = {"use_film", "patch_size", "num_features", "img_norm_type"}


# --------------------------------------------------------------------------------------------
# tokenizers (tokenizers.py)


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """``ImageTokenizer``: stacks ``obs_stack_keys`` (and goal images from ``task_stack_keys``,
    "early fusion") along channels and encodes each window step. Keys are regexes."""

    encoder: ImageEncoderConfig
    obs_stack_keys: tuple[str, ...] = ("image_.*", "depth_.*")
    task_stack_keys: tuple[str, ...] = ()
    task_film_keys: tuple[str, ...] = ()
    use_token_learner: bool = False
    num_tokens: int = 8
    conditioning_type: str = "none"
    proper_pad_mask: bool = True
    kind: str = "ImageTokenizer"


@dataclass(frozen=True)
class LanguageTokenizerConfig:
    """``LanguageTokenizer``: a (T5) text encoder over tokenized instructions.

    ``encoder`` is a Hugging Face name or path (``t5-base``); its weights live inside the
    checkpoint (``task_tokenizers_language/hf_model``). Upstream builds a T5 encoder only when
    the name contains "t5".
    """

    encoder: str | None = None
    finetune_encoder: bool = False
    proper_pad_mask: bool = True
    kind: str = "LanguageTokenizer"

    @property
    def is_t5(self) -> bool:
        return self.encoder is not None and "t5" in self.encoder


@dataclass(frozen=True)
class LowdimObsTokenizerConfig:
    """``LowdimObsTokenizer``: one token per low-dimensional input dim (e.g. ``proprio``),
    either the raw value (1 feature) or a one-hot of ``n_bins`` bins when ``discretize``."""

    obs_keys: tuple[str, ...] = ()
    discretize: bool = False
    n_bins: int = 256
    bin_type: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    proper_pad_mask: bool = True
    kind: str = "LowdimObsTokenizer"

    def __post_init__(self) -> None:
        if not self.obs_keys:
            raise ConfigError("LowdimObsTokenizer needs obs_keys (e.g. ['proprio'])")
        if self.bin_type not in ("uniform", "normal"):
            raise ConfigError(
                f"LowdimObsTokenizer.bin_type={self.bin_type!r}; expected 'uniform' or 'normal'"
            )
        if self.n_bins < 1:
            raise ConfigError(f"LowdimObsTokenizer.n_bins={self.n_bins} must be >= 1")

    @property
    def token_features(self) -> int:
        return self.n_bins if self.discretize else 1


TokenizerConfig = ImageTokenizerConfig | LanguageTokenizerConfig | LowdimObsTokenizerConfig


# --------------------------------------------------------------------------------------------
# heads (action_heads.py)


@dataclass(frozen=True)
class DiffusionHeadConfig:
    """``DiffusionActionHead``: a score MLP-ResNet conditioned on the pooled readout,
    sampled with DDPM over ``diffusion_steps`` cosine-schedule steps, clipped to ±max_action."""

    readout_key: str
    use_map: bool = False
    action_horizon: int = 1
    action_dim: int = 7
    max_action: float = 5.0
    loss_type: str = "mse"
    time_dim: int = 32
    num_blocks: int = 3
    dropout_rate: float = 0.0
    hidden_dim: int = 256
    use_layer_norm: bool = True
    diffusion_steps: int = 20
    n_diffusion_samples: int = 1
    kind: str = "DiffusionActionHead"

    def __post_init__(self) -> None:
        _check_head(self)
        if self.diffusion_steps < 1:
            raise ConfigError(f"{self.kind}.diffusion_steps={self.diffusion_steps} must be >= 1")

    def score_input_dim(self, embedding_size: int) -> int:
        """Rows of ``reverse_network/Dense_0/kernel``: time + embedding + action × horizon."""
        return self.time_dim + embedding_size + self.action_dim * self.action_horizon


@dataclass(frozen=True)
class ContinuousHeadConfig:
    """``L1ActionHead`` / ``MSEActionHead`` / ``ContinuousActionHead``: a tanh-squashed
    linear map of the pooled readout (MAP pooling by default for L1/MSE)."""

    readout_key: str
    use_map: bool = False
    action_horizon: int = 1
    action_dim: int = 7
    max_action: float = 5.0
    loss_type: str = "mse"
    kind: str = "ContinuousActionHead"

    def __post_init__(self) -> None:
        _check_head(self)


HeadConfig = DiffusionHeadConfig | ContinuousHeadConfig


def _check_head(head: DiffusionHeadConfig | ContinuousHeadConfig) -> None:
    for name in ("action_horizon", "action_dim"):
        value = getattr(head, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{head.kind}.{name}={value!r} must be an integer >= 1")
    if head.loss_type not in ("mse", "l1"):
        raise ConfigError(f"{head.kind}.loss_type={head.loss_type!r}; expected 'mse' or 'l1'")
    if head.max_action <= 0:
        raise ConfigError(f"{head.kind}.max_action={head.max_action} must be > 0")


_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "DiffusionActionHead": {},
    "ContinuousActionHead": {},
    "L1ActionHead": {"use_map": True, "loss_type": "l1"},
    "MSEActionHead": {"use_map": True, "loss_type": "mse"},
}


# --------------------------------------------------------------------------------------------
# transformer and the whole model


@dataclass(frozen=True)
class TransformerConfig:
    """``transformer_kwargs``: a pre-LayerNorm ViT encoder (``Transformer`` in transformer.py)."""

    num_layers: int
    mlp_dim: int
    num_attention_heads: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    add_position_embedding: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "mlp_dim", "num_attention_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"transformer_kwargs.{name}={value!r} must be an integer >= 1")
        if self.add_position_embedding:
            # Upstream asserts this too: OctoTransformer adds its own per-group embeddings.
            raise ConfigError(
                "transformer_kwargs.add_position_embedding=True is not supported (upstream Octo "
                "asserts it is False: position embeddings are added per token group)"
            )


@dataclass(frozen=True)
class OctoModelConfig:
    """``config.json["model"]``: the arguments of upstream ``OctoModule.create``."""

    observation_tokenizers: tuple[tuple[str, TokenizerConfig], ...]
    task_tokenizers: tuple[tuple[str, TokenizerConfig], ...]
    heads: tuple[tuple[str, HeadConfig], ...]
    readouts: tuple[tuple[str, int], ...]
    transformer: TransformerConfig
    token_embedding_size: int
    max_horizon: int
    repeat_task_tokens: bool = False
    use_correct_attention: bool = False

    def __post_init__(self) -> None:
        if self.token_embedding_size < 1:
            raise ConfigError(
                f"model.token_embedding_size={self.token_embedding_size} must be >= 1"
            )
        if self.token_embedding_size % self.transformer.num_attention_heads:
            raise ConfigError(
                f"model.token_embedding_size={self.token_embedding_size} is not divisible by "
                f"transformer_kwargs.num_attention_heads={self.transformer.num_attention_heads}"
            )
        if self.max_horizon < 1:
            raise ConfigError(f"model.max_horizon={self.max_horizon} must be >= 1")
        if not self.observation_tokenizers:
            raise ConfigError("model.observation_tokenizers is empty; Octo needs at least one")
        readout_names = {f"readout_{name}" for name, _ in self.readouts}
        for name, head in self.heads:
            if head.readout_key not in readout_names and not head.readout_key.startswith("obs"):
                raise ConfigError(
                    f"model.heads.{name}.readout_key={head.readout_key!r} names no readout; "
                    f"readouts give: {sorted(readout_names) or 'none'}"
                )

    def observation_tokenizer(self, name: str) -> TokenizerConfig:
        return dict(self.observation_tokenizers)[name]

    def task_tokenizer(self, name: str) -> TokenizerConfig:
        return dict(self.task_tokenizers)[name]

    def head(self, name: str = "action") -> HeadConfig:
        heads = dict(self.heads)
        if name not in heads:
            raise ConfigError(f"model has no head {name!r}; heads: {sorted(heads)}")
        return heads[name]

    @property
    def action_head(self) -> HeadConfig:
        return self.head("action")

    @property
    def language_tokenizer(self) -> LanguageTokenizerConfig | None:
        for _, tok in self.task_tokenizers:
            if isinstance(tok, LanguageTokenizerConfig):
                return tok
        return None

    @property
    def lowdim_tokenizers(self) -> list[tuple[str, LowdimObsTokenizerConfig]]:
        return [
            (n, t)
            for n, t in self.observation_tokenizers
            if isinstance(t, LowdimObsTokenizerConfig)
        ]


@dataclass(frozen=True)
class TextProcessorConfig:
    """``config.json["text_processor"]``: upstream ``HFTokenizer`` and its tokenizer kwargs.

    Upstream's own default ``max_length`` is 64; released configs set 16.
    """

    tokenizer_name: str
    max_length: int = 64
    padding: str = "max_length"
    truncation: bool = True
    encode_with_model: bool = False

    def __post_init__(self) -> None:
        if self.padding != "max_length":
            raise ConfigError(
                f"text_processor.kwargs.tokenizer_kwargs.padding={self.padding!r}; only "
                "'max_length' is supported (the model's language tokens have a fixed count)"
            )
        if self.encode_with_model:
            raise ConfigError(
                "text_processor.kwargs.encode_with_model=True is not supported: released Octo "
                "models encode instructions with the T5 inside the checkpoint"
            )
        if self.max_length < 1:
            raise ConfigError(f"text_processor max_length={self.max_length} must be >= 1")


@dataclass(frozen=True)
class OctoConfig:
    """Everything evalharness reads from an Octo ``config.json``."""

    model: OctoModelConfig
    text_processor: TextProcessorConfig | None
    window_size: int | None = None

    @classmethod
    def from_checkpoint_config(
        cls, config: Mapping[str, Any], source: str = "config.json"
    ) -> OctoConfig:
        """Parse a whole (already v1.0-shimmed) ``config.json``."""
        if not isinstance(config, Mapping) or "model" not in config:
            raise ConfigError(f"{source}: has no 'model' entry; is this an Octo config.json?")
        model = parse_model_config(config["model"], source)
        text = parse_text_processor(config.get("text_processor"), source)
        window = config.get("window_size")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 1
        ):
            raise ConfigError(f"{source}: window_size={window!r} must be an integer >= 1")
        if window is not None and window > model.max_horizon:
            raise ConfigError(
                f"{source}: window_size={window} exceeds model.max_horizon={model.max_horizon}"
            )
        return cls(model=model, text_processor=text, window_size=window)


# --------------------------------------------------------------------------------------------
# parsing


T = TypeVar("T")


def _spec_parts(spec: Any, where: str, module: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"{where}: expected a ModuleSpec dict {{'module', 'name', 'args', 'kwargs'}}, "
            f"got {spec!r:.120}"
        )
    if spec.get("module", module) != module:
        raise ConfigError(
            f"{where}: module {spec.get('module')!r}.{spec['name']} is not supported here; "
            f"expected a class from {module}"
        )
    if spec.get("args"):
        raise ConfigError(
            f"{where}: positional args {spec['args']!r} are not supported; use kwargs"
        )
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{where}.kwargs: expected a dict, got {kwargs!r:.80}")
    return str(spec["name"]), dict(kwargs)


def _build(
    cls: type[T],
    kwargs: Mapping[str, Any],
    where: str,
    exclude: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> T:
    known = {f.name for f in fields(cls)} - {"kind", *exclude}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {unknown}; {cls.__name__} accepts {sorted(known)}"
        )
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in kwargs:
            continue
        value = kwargs[f.name]
        values[f.name] = _coerce(value, f.type, f"{where}.{f.name}")
    values.update(extra or {})
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    text = str(annotation)
    if text.startswith("tuple[str"):
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}={value!r}: expected a list of strings")
        return tuple(value)
    if text.startswith("tuple[int"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{where}={value!r}: expected a list of integers")
        return tuple(value)
    if text == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected true or false")
        return value
    if text == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r}: expected an integer")
        return value
    if text == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r}: expected a number")
        return float(value)
    if text == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: expected a string")
        return value
    if text == "str | None":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: expected a string or null")
        return value
    return value


def parse_encoder(spec: Any, where: str) -> ImageEncoderConfig:
    """An image encoder ModuleSpec (``SmallStem16`` etc.)."""
    name, kwargs = _spec_parts(spec, where, ENCODERS_MODULE)
    if name not in _ENCODER_DEFAULTS:
        raise ConfigError(
            f"{where}: image encoder {name!r} is not supported; known: {sorted(_ENCODER_DEFAULTS)}"
        )
    if name == "PatchEncoder":
        unknown = sorted(set(kwargs) - _PATCH_ENCODER_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {unknown}; PatchEncoder accepts "
                f"{sorted(_PATCH_ENCODER_FIELDS)}"
            )
    merged = {**_ENCODER_DEFAULTS[name], **kwargs}
    return _build(ImageEncoderConfig, merged, f"{where}({name})", extra={"kind": name})


def parse_tokenizer(spec: Any, where: str) -> TokenizerConfig:
    """A tokenizer ModuleSpec: ``ImageTokenizer``, ``LanguageTokenizer`` or ``LowdimObsTokenizer``."""
    name, kwargs = _spec_parts(spec, where, TOKENIZERS_MODULE)
    if name == "ImageTokenizer":
        if "encoder" not in kwargs:
            raise ConfigError(f"{where}: ImageTokenizer needs an 'encoder' ModuleSpec")
        encoder = parse_encoder(kwargs.pop("encoder"), f"{where}.kwargs.encoder")
        tok = _build(
            ImageTokenizerConfig,
            kwargs,
            f"{where}(ImageTokenizer)",
            exclude=("encoder",),
            extra={"encoder": encoder},
        )
        if tok.use_token_learner:
            raise ConfigError(f"{where}: use_token_learner=True is not supported by evalharness")
        if tok.task_film_keys:
            raise ConfigError(f"{where}: task_film_keys (FiLM) are not supported by evalharness")
        return tok
    if name == "LanguageTokenizer":
        return _build(LanguageTokenizerConfig, kwargs, f"{where}(LanguageTokenizer)")
    if name == "LowdimObsTokenizer":
        return _build(LowdimObsTokenizerConfig, kwargs, f"{where}(LowdimObsTokenizer)")
    raise ConfigError(
        f"{where}: tokenizer {name!r} is not supported; known: ImageTokenizer, "
        "LanguageTokenizer, LowdimObsTokenizer"
    )


def parse_head(spec: Any, where: str) -> HeadConfig:
    """An action head ModuleSpec, with upstream's per-class defaults (L1/MSE use MAP pooling)."""
    name, kwargs = _spec_parts(spec, where, HEADS_MODULE)
    if name not in _HEAD_DEFAULTS:
        raise ConfigError(
            f"{where}: action head {name!r} is not supported; known: {sorted(_HEAD_DEFAULTS)}"
        )
    if "pred_horizon" in kwargs:  # Octo 1.0 name
        kwargs.setdefault("action_horizon", kwargs.pop("pred_horizon"))
    merged = {**_HEAD_DEFAULTS[name], **kwargs}
    if "readout_key" not in merged:
        raise ConfigError(f"{where}: {name} needs a readout_key (e.g. 'readout_action')")
    cls: type[DiffusionHeadConfig] | type[ContinuousHeadConfig] = (
        DiffusionHeadConfig if name == "DiffusionActionHead" else ContinuousHeadConfig
    )
    return _build(cls, merged, f"{where}({name})", extra={"kind": name})


def _named(section: Any, where: str) -> list[tuple[str, Any]]:
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a dict of name → ModuleSpec, got {section!r:.80}")
    return [(str(k), v) for k, v in section.items()]


def parse_model_config(model: Mapping[str, Any], source: str = "config.json") -> OctoModelConfig:
    """``config.json["model"]`` → :class:`OctoModelConfig`, naming any bad key and value."""
    where = f"{source}: model"
    if not isinstance(model, Mapping):
        raise ConfigError(f"{where}: expected a dict, got {type(model).__name__}")
    known = {
        "observation_tokenizers",
        "task_tokenizers",
        "heads",
        "readouts",
        "transformer_kwargs",
        "token_embedding_size",
        "max_horizon",
        "repeat_task_tokens",
        "use_correct_attention",
    }
    unknown = sorted(set(model) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; OctoModule.create takes {sorted(known)}"
        )
    for required in (
        "observation_tokenizers",
        "heads",
        "transformer_kwargs",
        "token_embedding_size",
    ):
        if required not in model:
            raise ConfigError(f"{where}: missing required key {required!r}")

    obs = [
        (n, parse_tokenizer(s, f"{where}.observation_tokenizers.{n}"))
        for n, s in _named(model["observation_tokenizers"], f"{where}.observation_tokenizers")
    ]
    tasks = [
        (n, parse_tokenizer(s, f"{where}.task_tokenizers.{n}"))
        for n, s in _named(model.get("task_tokenizers"), f"{where}.task_tokenizers")
    ]
    heads = [
        (n, parse_head(s, f"{where}.heads.{n}"))
        for n, s in _named(model["heads"], f"{where}.heads")
    ]
    readouts = []
    for n, count in _named(model.get("readouts"), f"{where}.readouts"):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}.readouts.{n}={count!r}: expected an integer >= 1")
        readouts.append((n, count))
    tk = model["transformer_kwargs"]
    if not isinstance(tk, Mapping):
        raise ConfigError(f"{where}.transformer_kwargs: expected a dict, got {tk!r:.80}")
    transformer = _build(TransformerConfig, tk, f"{where}.transformer_kwargs")
    scalars: dict[str, Any] = {}
    for key, kind, default in (
        ("token_embedding_size", "int", None),
        ("max_horizon", "int", 10),
        ("repeat_task_tokens", "bool", False),
        ("use_correct_attention", "bool", False),  # absent in Octo 1.0 configs
    ):
        value = model.get(key, default)
        if value is None:
            raise ConfigError(f"{where}: missing required key {key!r}")
        scalars[key] = _coerce(value, kind, f"{where}.{key}")
    try:
        return OctoModelConfig(
            observation_tokenizers=tuple(obs),
            task_tokenizers=tuple(tasks),
            heads=tuple(heads),
            readouts=tuple(readouts),
            transformer=transformer,
            **scalars,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_text_processor(spec: Any, source: str = "config.json") -> TextProcessorConfig | None:
    """``config.json["text_processor"]`` (None when the model takes no language)."""
    if spec is None:
        return None
    where = f"{source}: text_processor"
    name, kwargs = _spec_parts(spec, where, TEXT_MODULE)
    if name != "HFTokenizer":
        raise ConfigError(f"{where}: text processor {name!r} is not supported; known: HFTokenizer")
    if "tokenizer_name" not in kwargs:
        raise ConfigError(f"{where}: HFTokenizer needs tokenizer_name (e.g. 't5-base')")
    tk = kwargs.get("tokenizer_kwargs") or {}
    if not isinstance(tk, Mapping):
        raise ConfigError(f"{where}.kwargs.tokenizer_kwargs: expected a dict, got {tk!r:.80}")
    unknown = sorted(set(tk) - {"max_length", "padding", "truncation", "return_tensors"})
    if unknown:
        raise ConfigError(f"{where}.kwargs.tokenizer_kwargs: unsupported option(s) {unknown}")
    values = {
        "tokenizer_name": _coerce(kwargs["tokenizer_name"], "str", f"{where}.tokenizer_name"),
        "encode_with_model": _coerce(
            kwargs.get("encode_with_model", False), "bool", f"{where}.encode_with_model"
        ),
    }
    if "max_length" in tk:
        values["max_length"] = _coerce(
            tk["max_length"], "int", f"{where}.tokenizer_kwargs.max_length"
        )
    if "padding" in tk:
        padding = tk["padding"]
        values["padding"] = "max_length" if padding == "max_length" else str(padding)
    if "truncation" in tk:
        values["truncation"] = bool(tk["truncation"])
    try:
        return TextProcessorConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
