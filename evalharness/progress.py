"""The live progress line of a run: episodes done, success so far, env steps per second."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """A one-line tqdm bar on stderr; inert when `enabled` is False (no tty, --no-progress)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.successes = 0
        self.finished = 0
        self.t0 = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="ep", file=sys.stderr, dynamic_ncols=True
            )

    def episode_done(self, success: bool, env_steps: int) -> None:
        """Count one finished episode; `env_steps` is the run's total so far."""
        self.finished += 1
        self.successes += int(success)
        if self.bar is not None:
            rate = env_steps / max(time.monotonic() - self.t0, 1e-9)
            ok = f"{100 * self.successes / self.finished:.0f}%"
            self.bar.set_postfix_str(f"success {ok} · {rate:.1f} env steps/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """End the bar's line."""
        if self.bar is not None:
            self.bar.close()
