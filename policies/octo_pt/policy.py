"""The ``octo_pt`` policy: Octo in PyTorch behind ``act()``, from a JAX or a torch checkpoint.

    evalharness run --suite libero_spatial --policy "octo_pt:/ckpt?stats=libero_spatial_no_noops"
    evalharness run ... --policy "octo_pt:hf://rail-berkeley/octo-small-1.5?device=cuda&stats=bridge_dataset"

Per query, for a batch of envs (the same steps as ``octo_jax``, through the same shared code in
``policies/octo/inputs.py``): resize images to the checkpoint's sizes (numpy lanczos3, as
Octo's ``ResizeImageWrapper``), mark missing cameras and padded history steps, tokenize and
T5-encode each distinct instruction once (cached; ``policies/octo/text.py``), run the
transformer and the action head under ``torch.inference_mode``, un-normalize with the dataset
statistics and convert the gripper to LIBERO's convention. Diffusion noise comes from one torch
generator per episode (seeded by ``episode_seed`` and ``seed``, kept in the policy's
``EpisodeStreams``: restarted at ``episode_start``, forgotten when the episode ends, never kept
for padding rows), drawn on the CPU, so an episode's actions do not depend on the device or on
what else shares its batch.

Options: :class:`~evalharness.policies.octo.options.OctoOptions` (shared by both Octo families;
``evalharness policies`` lists them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.common.compat import report_non_strict_load
from evalharness.policies.common.normalization import (
    DatasetStatistics,
    Gripper,
    NormalizationType,
    select_statistics,
)
from evalharness.policies.common.options import OptionError, option_device, parse_options
from evalharness.policies.octo.inputs import (
    OctoInputSpec,
    postprocess_actions,
    prepare_observation,
    prepare_tasks,
)
from evalharness.policies.octo.options import OctoOptions
from evalharness.policies.octo.text import TextTokenizer, instruction_tokenizer
from evalharness.policies.octo_pt.checkpoint import LoadedOcto, load_octo_pt
from evalharness.policies.octo_pt.heads import ContinuousActionHead, DiffusionActionHead

__all__ = ["OctoPtPolicy", "make_octo_pt_policy", "to_torch"]

_OWNER = "policy 'octo_pt'"


def to_torch(tree: Any, device: torch.device) -> Any:
    """Nested dicts of numpy arrays → the same of tensors on ``device``."""
    if isinstance(tree, Mapping):
        return {k: to_torch(v, device) for k, v in tree.items()}
    return torch.as_tensor(np.asarray(tree), device=device)


class OctoPtPolicy(Policy):
    """Batched Octo inference in torch for a loaded checkpoint (options: module docstring)."""

    def __init__(
        self,
        loaded: LoadedOcto,
        *,
        statistics: DatasetStatistics | None,
        tokenizer: TextTokenizer | None,
        device: str | torch.device = "cpu",
        compile: bool = False,
        normalization: NormalizationType | str = NormalizationType.NORMAL,
        gripper: Gripper | str | None = Gripper.OCTO,
        seed: int = 0,
        exec_horizon: int | None = None,
        temporal_ensemble: float | None = None,
        resize_in_env: bool = False,
    ) -> None:
        self.loaded = loaded
        self.checkpoint = str(loaded.directory)
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        if compile:
            # The transformer stack is a pure tensor function (tokens, mask) → tokens: it
            # compiles cleanly; tokenizers and the denoising loop stay eager.
            stack = self.model.octo_transformer.transformer
            self.model.octo_transformer.transformer = torch.compile(stack)  # type: ignore[assignment]
        self.statistics = statistics
        self.tokenizer = tokenizer
        self.normalization = NormalizationType.parse(normalization)
        self.gripper = None if gripper is None else Gripper.parse(gripper)
        self.seed = int(seed)
        self.inputs = OctoInputSpec.from_example_batch(
            loaded.example_batch,
            loaded.config.window_size,
            source=f"{loaded.directory}/example_batch.msgpack",
        )
        head = dict(self.model.heads.items()).get("action")
        if not isinstance(head, (DiffusionActionHead, ContinuousActionHead)):
            raise ValueError(
                f"{loaded.name}: the model has no 'action' head; heads: {list(self.model.heads)}"
            )
        self.head = head
        language = dict(self.model.octo_transformer.task_tokenizers.items()).get("language")
        self._t5 = getattr(language, "t5", None)
        needs_language = loaded.config.model.language_tokenizer is not None
        if needs_language and tokenizer is None:
            raise ValueError(f"{loaded.name}: the model takes language but no tokenizer was given")
        self._encodes_language = needs_language and self.inputs.language_length is not None
        self.embodiment_action_dim = statistics.action.dim if statistics else None
        action_dim = min(head.action_dim, statistics.action.dim) if statistics else head.action_dim
        summary: dict[str, Any] | None = None
        if statistics is not None:
            summary = {"key": statistics.key, "action": statistics.action.to_dict()}
            if statistics.proprio is not None:
                summary["proprio"] = statistics.proprio.to_dict()
        self.spec = PolicySpec(
            name="octo_pt",
            window_size=self.inputs.window_size,
            action_horizon=head.action_horizon,
            action_dim=action_dim,
            image_sizes=dict(self.inputs.obs_images) if resize_in_env else {},
            needs_language=needs_language,
            exec_horizon=exec_horizon,
            temporal_ensemble_weight=temporal_ensemble,
            dataset_statistics=summary,
        )
        self.episodes: EpisodeStreams[torch.Generator] = EpisodeStreams(self._generator)
        self._language_cache: dict[str, torch.Tensor] = {}

    def reset(self, batch_size: int) -> None:
        """Forget the per-episode noise generators."""
        self.episodes.clear()

    def _generator(self, episode_seed: int) -> torch.Generator:
        """An episode's noise stream: a CPU generator seeded by (``seed``, ``episode_seed``)."""
        entropy = [self.seed & 0xFFFFFFFF, int(episode_seed) & 0xFFFFFFFF]
        state = np.random.SeedSequence(entropy).generate_state(2)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(state[0]) << 32 | int(state[1]))
        return gen

    def _noise(
        self, tasks: Mapping[str, Any], batch: int, window: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-episode DDPM noise (initial, per step), drawn on CPU from each episode's generator;
        without ``episode_seed`` (a direct call) row i is episode i."""
        if not isinstance(self.head, DiffusionActionHead):
            return None
        flat = self.head.action_horizon * self.head.action_dim
        steps = self.head.diffusion_steps
        init, per_step = [], []
        for gen in self.episodes.rows(tasks, batch):
            init.append(torch.randn((window, flat), generator=gen))
            per_step.append(torch.randn((steps, window, flat), generator=gen))
        return torch.stack(init), torch.stack(per_step, dim=1)

    def model_inputs(
        self, obs: Mapping[str, np.ndarray], instructions: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Octo's ``observation`` and ``task`` dicts (numpy, token ids) for standard observations."""
        proprio = self.statistics.proprio if self.statistics is not None else None
        lowdim = (
            {"proprio": proprio}
            if proprio is not None and "proprio" in self.inputs.lowdim
            else None
        )
        observation = prepare_observation(obs, self.inputs, lowdim, self.normalization)
        batch = observation["timestep_pad_mask"].shape[0]
        if batch != len(instructions):
            raise ValueError(
                f"observations have batch {batch} but {len(instructions)} instructions were given"
            )
        language = None
        if self._encodes_language:
            assert self.tokenizer is not None
            language = self.tokenizer.encode(list(instructions))
        return observation, prepare_tasks(batch, self.inputs, language)

    def encode_instructions(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, tokens, d) T5 embeddings on the device; each distinct instruction encoded once."""
        new = [s for s in dict.fromkeys(instructions) if s not in self._language_cache]
        if new:
            assert self.tokenizer is not None and self._t5 is not None
            ids = self.tokenizer.encode(new)
            with torch.inference_mode():
                emb = self._t5(
                    torch.as_tensor(ids["input_ids"], device=self.device),
                    torch.as_tensor(ids["attention_mask"], device=self.device),
                )
            for text, row in zip(new, emb, strict=True):
                self._language_cache[text] = row
        return torch.stack([self._language_cache[s] for s in instructions])

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        """Action chunks (B, action_horizon, action_dim) in LIBERO's action space."""
        instructions = [str(t) for t in tasks["language_instruction"]]
        observation, task = self.model_inputs(obs, instructions)
        batch, window = observation["timestep_pad_mask"].shape
        noise = self._noise(tasks, batch, window)
        with torch.inference_mode():
            o, t = to_torch(observation, self.device), to_torch(task, self.device)
            if self._encodes_language and self._t5 is not None:
                # Language tokens depend on the instruction alone: reuse their embeddings.
                t["language_instruction"] = self.encode_instructions(instructions)
            actions = self.model.sample_actions(
                o, t, embodiment_action_dim=self.embodiment_action_dim, noise=noise
            )
            normalized = actions.float().cpu().numpy()
        stats = self.statistics.action if self.statistics is not None else None
        out = postprocess_actions(normalized, stats, self.normalization, self.gripper)
        return out[..., : self.spec.action_dim]


def make_octo_pt_policy(path: str | None = None, **options: str) -> Policy:
    """Build the ``octo_pt`` policy from ``octo_pt:PATH?options`` (:class:`OctoOptions`)."""
    if not path:
        raise OptionError(
            "policy 'octo_pt' needs a checkpoint: octo_pt:/path/to/ckpt (an upstream Octo JAX "
            "checkpoint directory, an octo_pt torch checkpoint, or hf://org/name)"
        )
    opts = parse_options(OctoOptions, options, _OWNER, family="octo_pt")
    device = option_device({"device": opts.device}, _OWNER)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    loaded = load_octo_pt(
        path, step=opts.step, strict=opts.strict, skip=opts.skip, non_strict=opts.non_strict
    )
    report_non_strict_load(f"octo_pt {loaded.name}", loaded.report)
    statistics = None
    if loaded.dataset_statistics:
        statistics = select_statistics(
            loaded.dataset_statistics,
            opts.stats,
            source=f"{loaded.directory}/dataset_statistics.json",
        )
    else:
        warnings.warn(
            f"octo_pt {loaded.name}: no dataset statistics; actions are returned normalized",
            stacklevel=2,
        )
    tokenizer = instruction_tokenizer(
        loaded.config.model.language_tokenizer is not None,
        loaded.config.text_processor,
        loaded.directory,
        opts.tokenizer,
    )
    default_norm = (loaded.raw_config.get("dataset_kwargs") or {}).get(
        "action_proprio_normalization_type", "normal"
    )
    return OctoPtPolicy(
        loaded,
        statistics=statistics,
        tokenizer=tokenizer,
        device=device,
        compile=opts.compile,
        normalization=opts.normalization or default_norm,
        gripper=None if opts.gripper == "none" else opts.gripper,
        seed=opts.seed,
        exec_horizon=opts.exec_horizon,
        temporal_ensemble=opts.temporal_ensemble,
        resize_in_env=opts.resize == "env",
    )
