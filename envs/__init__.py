"""Environments: LIBERO as a gymnasium env plus composable wrappers (imported as evalharness.envs).

The first stage of the data path: simulator state in, standard observations out
(`image_primary`, `image_wrist`, `proprio`, `language_instruction`).
"""
