"""Policies behind one `act()` contract (imported as evalharness.policies).

>>> from evalharness.policies import load_policy
>>> from evalharness.policies.registry import NO_OP_POLICY
>>> load_policy(f"{NO_OP_POLICY}?action_horizon=4&exec_horizon=2").spec.exec_horizon
2
"""

from evalharness.policies.base import Policy, PolicyOutputError, PolicySpec, check_actions
from evalharness.policies.registry import (
    PolicyRef,
    PolicyStringError,
    known_policies,
    load_policy,
    parse_policy_string,
    register_policy,
)

__all__ = [
    "Policy",
    "PolicyOutputError",
    "PolicyRef",
    "PolicySpec",
    "PolicyStringError",
    "check_actions",
    "known_policies",
    "load_policy",
    "parse_policy_string",
    "register_policy",
]
