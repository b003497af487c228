"""Statistics for comparing two runs on the same episodes.

Two runs evaluated on the same (task, init state, seed) episodes are *paired*: each episode
gives one outcome per run, and the four possible outcome pairs form a 2x2 table

===================  ================  ================
counts               run B succeeds    run B fails
===================  ================  ================
run A succeeds       ``both``          ``only_a``
run A fails          ``only_b``        ``neither``
===================  ================  ================

Pairing removes the between-episode variance (some init states are easy for every policy), so
a paired test detects a real difference with far fewer episodes than comparing two Wilson
intervals by eye. Only the discordant episodes (``only_a``, ``only_b``) carry information about
which run is better.

- :func:`mcnemar_exact_p`: exact two-sided McNemar test, i.e. a two-sided binomial test of
  ``only_b`` successes in ``only_a + only_b`` trials at p = 1/2, computed with integer
  arithmetic (no normal approximation, no SciPy).
- :func:`paired_difference_ci`: Newcombe's hybrid-score ("square-and-add") interval for the
  difference of paired proportions, method 10 of Newcombe (1998), *Statistics in Medicine*
  17:2635-2650, as recommended by Fagerland, Lydersen & Laake (2014), *Statistical Methods in
  Medical Research* 24(2). It combines the two marginal Wilson intervals, corrected for their
  correlation, so it stays inside [-1, 1] and is informative at 0 % or 100 % success, which
  Wald intervals are not.

The Wilson interval itself lives in :mod:`evalharness.results` and is reused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from evalharness.results import wilson_interval

__all__ = ["PairedTable", "mcnemar_exact_p", "paired_difference_ci"]


@dataclass(frozen=True)
class PairedTable:
    """Outcome pairs of two runs on shared episodes (see the module docstring's table)."""

    both: int
    only_a: int
    only_b: int
    neither: int

    def __post_init__(self) -> None:
        for name in ("both", "only_a", "only_b", "neither"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PairedTable.{name} must be a count >= 0, got {value!r}")

    @property
    def n(self) -> int:
        """Number of shared episodes."""
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def successes_a(self) -> int:
        """Episodes run A solved."""
        return self.both + self.only_a

    @property
    def successes_b(self) -> int:
        """Episodes run B solved."""
        return self.both + self.only_b

    @property
    def difference(self) -> float:
        """Success rate of B minus success rate of A on the shared episodes (0.0 if none)."""
        return (self.only_b - self.only_a) / self.n if self.n else 0.0


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts.

    Under "both runs are equally good" each discordant episode is a fair coin, so ``only_b``
    is Binomial(only_a + only_b, 1/2); the p-value is twice the smaller tail, capped at 1.
    Computed exactly with integers; no discordant pairs gives 1.0.

    >>> mcnemar_exact_p(1, 6)  # 2 * (C(7,0) + C(7,1)) / 2**7
    0.125
    """
    for name, value in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a count >= 0, got {value!r}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_difference_ci(table: PairedTable, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe hybrid-score interval for ``rate_B - rate_A`` on paired episodes.

    With ``p_b, p_a`` the two success rates on the ``n`` shared episodes, ``(l_b, u_b)`` and
    ``(l_a, u_a)`` their Wilson intervals, and ``phi`` the continuity-corrected correlation
    of the two outcomes (``D = both * neither - only_a * only_b``; ``phi = (D - n/2) / sqrt(
    product of the four margins)`` if ``D > n/2``, ``0`` if ``0 <= D <= n/2``, ``D / sqrt(...)``
    if ``D < 0``, and ``0`` when a margin is empty):

        lower = (p_b - p_a) - sqrt((p_b - l_b)^2 + (u_a - p_a)^2 - 2 phi (p_b - l_b)(u_a - p_a))
        upper = (p_b - p_a) + sqrt((u_b - p_b)^2 + (p_a - l_a)^2 - 2 phi (u_b - p_b)(p_a - l_a))

    No shared episodes gives the uninformative ``(-1.0, 1.0)``.
    """
    n = table.n
    if n == 0:
        return (-1.0, 1.0)
    p_b, p_a = table.successes_b / n, table.successes_a / n
    l_b, u_b = wilson_interval(table.successes_b, n, confidence)
    l_a, u_a = wilson_interval(table.successes_a, n, confidence)
    margins = (
        table.successes_a * (n - table.successes_a) * table.successes_b * (n - table.successes_b)
    )
    phi = 0.0
    if margins > 0:
        d = table.both * table.neither - table.only_a * table.only_b
        if d > n / 2:
            phi = (d - n / 2) / math.sqrt(margins)
        elif d < 0:
            phi = d / math.sqrt(margins)
    diff = p_b - p_a
    down_b, up_a = p_b - l_b, u_a - p_a
    up_b, down_a = u_b - p_b, p_a - l_a
    # max(0, .): the radicand is a sum of squares minus a cross term with |phi| <= 1, so it is
    # >= 0 in exact arithmetic; rounding can leave -1e-17.
    lower = diff - math.sqrt(max(0.0, down_b**2 + up_a**2 - 2.0 * phi * down_b * up_a))
    upper = diff + math.sqrt(max(0.0, up_b**2 + down_a**2 - 2.0 * phi * up_b * down_a))
    return (max(-1.0, lower), min(1.0, upper))
