"""Which OpenGL renderer the env workers will use, and how fast it is: checked at run start.

LIBERO's cost per step is mostly two camera renders. Under `MUJOCO_GL=egl` they run on an
NVIDIA GPU when its EGL driver is installed, and otherwise silently on Mesa's llvmpipe, a
software rasterizer on the CPU some 50-100x slower. Which one a run got is invisible from the
outside, so the runner probes it once (one GL context, one timed frame of a small MuJoCo
scene at the run's camera size), prints it and records it in `run.json` under
`render_backend`.

With NVIDIA GPUs each env worker renders on one of them: worker `i` gets EGL device
`i % number of GPUs` (of the `CUDA_VISIBLE_DEVICES` list when set) through
`MUJOCO_EGL_DEVICE_ID`, unless the user set that variable. EGL numbers devices in PCI order;
set `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA's numbers agree.

    python -m evalharness.render_check            # prints the probe as JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

_SCENE = """
<mujoco>
  <visual><global offwidth="1024" offheight="1024"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1"/>
    <geom type="plane" size="2 2 0.1" rgba=".8 .8 .8 1"/>
    {bodies}
  </worldbody>
</mujoco>
"""


def renderer_kind(gl_renderer: str, gl_vendor: str = "") -> str:
    """'nvidia', 'mesa-software' (llvmpipe/softpipe/swrast), 'mesa-gpu' or 'other'."""
    text = f"{gl_renderer} {gl_vendor}".lower()
    if "nvidia" in text:
        return "nvidia"
    if any(name in text for name in ("llvmpipe", "softpipe", "swrast", "software")):
        return "mesa-software"
    if "mesa" in text:
        return "mesa-gpu"
    return "other"


def nvidia_gpu_count() -> int:
    """NVIDIA GPUs the driver exposes (0 without a driver); respects CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return len(list(gpus.iterdir()))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def egl_device_for(worker: int, gpus: int | None = None) -> int | None:
    """The EGL device env worker `worker` renders on, or None to leave the default.

    Only under `MUJOCO_GL=egl` with NVIDIA GPUs, and only when the user did not pick one.
    """
    if os.environ.get("MUJOCO_GL", "egl") != "egl" or "MUJOCO_EGL_DEVICE_ID" in os.environ:
        return None
    # robosuite indexes EGL devices by physical number and reads CUDA_VISIBLE_DEVICES the
    # same way (a Ray actor's GPU is therefore picked up without help): spread over those.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    devices = [int(d) for d in visible.split(",") if d.strip().isdigit()]
    if gpus is None and devices:
        return devices[worker % len(devices)]
    gpus = nvidia_gpu_count() if gpus is None else gpus
    return worker % gpus if gpus > 0 else None


def probe(camera_size: int = 128) -> dict[str, Any]:
    """Make a GL context the way env workers do, read its renderer, time one frame.

    Returns `backend` (MUJOCO_GL), `gl_renderer`, `gl_vendor`, `gl_version`, `kind` (see
    `renderer_kind`), `nvidia_gpus`, `frame_ms` (one `camera_size` px frame after a warm-up
    frame) and `error` when no context could be made.
    """
    # Importing the env module sets MUJOCO_GL/PYOPENGL_PLATFORM defaults exactly as workers do.
    import evalharness.envs.libero  # noqa: F401

    result: dict[str, Any] = {
        "backend": os.environ.get("MUJOCO_GL", ""),
        "egl_device": os.environ.get("MUJOCO_EGL_DEVICE_ID"),
        "nvidia_gpus": nvidia_gpu_count(),
        "camera_size": camera_size,
    }
    try:
        import mujoco
        from OpenGL import GL

        bodies = "\n".join(
            f'<body pos="{(i % 8) * 0.2 - 0.7:.2f} {(i // 8) * 0.2 - 0.7:.2f} 0.1">'
            f'<freejoint/><geom type="box" size=".05 .05 .05" rgba=".2 .4 .{i % 10} 1"/></body>'
            for i in range(64)
        )
        model = mujoco.MjModel.from_xml_string(_SCENE.format(bodies=bodies))
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer = mujoco.Renderer(model, camera_size, camera_size)
        try:
            renderer.update_scene(data)
            renderer.render()  # warm-up: shader compilation, first upload
            # The renderer's context is current now: read what it runs on.
            for key, name in (
                ("gl_renderer", GL.GL_RENDERER),
                ("gl_vendor", GL.GL_VENDOR),
                ("gl_version", GL.GL_VERSION),
            ):
                value = GL.glGetString(name)
                result[key] = value.decode() if isinstance(value, bytes) else str(value)
            t0 = time.perf_counter()
            renderer.update_scene(data)
            renderer.render()
            result["frame_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        finally:
            renderer.close()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["kind"] = renderer_kind(result.get("gl_renderer", ""), result.get("gl_vendor", ""))
    return result


def describe(result: dict[str, Any]) -> str:
    """One line for the terminal: what renders, how fast, and a hint when a GPU goes unused."""
    if "error" in result:
        return (
            f"rendering: MUJOCO_GL={result.get('backend')} failed to make a context "
            f"({result['error']})"
        )
    text = (
        f"rendering: MUJOCO_GL={result['backend']} on {result.get('gl_renderer', '?')} "
        f"({result['kind']}), {result.get('frame_ms', float('nan')):.1f} ms per "
        f"{result['camera_size']} px test frame"
    )
    if result["kind"] != "nvidia" and result.get("nvidia_gpus", 0) > 0:
        text += (
            "; an NVIDIA GPU is present but not used for rendering (is its EGL driver, "
            "libEGL_nvidia, installed?)"
        )
    return text


if __name__ == "__main__":
    print(json.dumps(probe(), indent=2))
