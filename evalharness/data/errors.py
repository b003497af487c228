"""The data layer's one error type."""

from __future__ import annotations

from evalharness.errors import EvalharnessError


class DatasetError(EvalharnessError, ValueError):
    """A dataset that cannot be read as the spec says: missing keys, bad dtypes or shapes,
    corrupt records. The message names the file, the key and what was expected, so the fix is
    obvious without opening the file in a debugger."""
