"""robomimic / DROID diffusion policy (``DiffusionPolicyUNet``), loaded without robomimic.

- :mod:`.nets`: the networks, with upstream's state-dict names;
- :mod:`.config`: what a checkpoint says about its model, as frozen dataclasses;
- :mod:`.checkpoint`: reading ``.pth`` files (``weights_only`` unless trusted) and loading weights
  with the shared compatibility report;
- :mod:`.schedulers`: DDPM / DDIM with diffusers 0.11.1's arithmetic;
- :mod:`.keymap`, :mod:`.actions`: standard observation -> checkpoint keys, and network output ->
  LIBERO actions;
- :mod:`.policy`: the ``diffusion`` adapter (``act()``), registered in ``policies.builtin``.

Importing this package does not import torch; its modules do.
"""
