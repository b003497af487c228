"""Octo in PyTorch (``--policy octo_pt:CKPT``): the same model as ``octo_jax``, no JAX.

- :mod:`.model`: ``OctoTransformer`` / ``OctoModel`` and ``build_octo_model(config, ...)``,
  from :mod:`.tokenizers`, :mod:`.transformer` (block-causal attention) and :mod:`.heads`.
- :mod:`.t5`: the T5 text encoder, in plain torch.
- :mod:`.jax_weights`: upstream Flax parameters → torch, with a per-leaf compatibility report.
- :mod:`.checkpoint`: reading either checkpoint layout; writing the torch (safetensors) one.
- :mod:`.policy`: the adapter (:func:`~.policy.make_octo_pt_policy`).

Importing this package imports nothing heavy; torch loads with the submodules.
"""
