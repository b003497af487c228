"""The contract every registered policy family passes (``policies/base.py``).

Parametrized over the registry, not over a list: a family gets these checks by registering,
through the ``example`` hook of its entry (``policies.examples.PolicyExample``: a small policy
string and an observation builder). A family without one fails here. Examples that load a
checkpoint use the upstream-written fixtures in ``../shared/fixtures`` and are skipped, saying
so, where those or the family's extra are not installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalharness.batching import pad_batch
from evalharness.policies import Policy, PolicySpec, check_actions, load_policy
from evalharness.policies.base import EpisodeStreams
from evalharness.policies.common.compat import NonStrictLoadWarning
from evalharness.policies.examples import PolicyExample
from evalharness.policies.registry import families

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FAMILIES = sorted(families())
#: every call is padded to this many rows, as the runner pads (one compiled shape per family).
PADDED = 4
#: the same episode in another batch may differ by float reassociation, nothing more.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _example(name: str) -> PolicyExample:
    family = families()[name]
    if family.example is None:
        pytest.fail(
            f"policy family {name!r} (from {family.source}) has no contract example: give its "
            "PolicyFamily an example= hook returning a PolicyExample "
            "(docs/adding-a-policy-family.md)"
        )
    if not family.installed:
        pytest.skip(f"{name}: {family.missing()} not installed (evalharness[{family.extra}])")
    example = family.load("example")(FIXTURES)
    absent = [str(f) for f in example.files if not f.exists()]
    if absent:
        pytest.skip(f"{name}: example files not available: {absent}")
    return example


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch's intra-op threads spin-wait on a shared 2-core CPU; one thread here, restored."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, PolicyExample, Policy]:
    """(name, example, policy loaded from the example), once per family."""
    name = request.param
    example = _example(name)
    return name, example, load_policy(example.policy)


def act(
    policy: Policy,
    example: PolicyExample,
    seeds: list[int],
    starts: list[bool],
    obs_seeds: list[int] | None = None,
) -> np.ndarray:
    """One call as the runner makes it (padded to PADDED rows unless the policy opts out);
    the real rows' actions. ``obs_seeds`` gives rows another episode's observation."""
    obs = dict(example.observations(policy.spec, obs_seeds or seeds))
    tasks = example.tasks(seeds, starts)
    size = PADDED if policy.pad_batch else len(seeds)
    obs, tasks = pad_batch(obs, tasks, len(seeds), size)
    actions = policy.act(obs, tasks)
    return check_actions(policy, actions, size)[: len(seeds)]


def streams(policy: Policy) -> list[EpisodeStreams[Any]]:
    return [v for v in vars(policy).values() if isinstance(v, EpisodeStreams)]


def test_spec_and_act_shapes_and_dtypes(family):
    name, example, policy = family
    spec = policy.spec
    assert isinstance(spec, PolicySpec) and spec.name == name
    obs = dict(example.observations(spec, [11, 12, 13]))
    tasks = example.tasks([11, 12, 13], [True] * 3)
    obs, tasks = pad_batch(obs, tasks, 3, PADDED)
    actions = policy.act(obs, tasks)
    assert isinstance(actions, np.ndarray)
    assert actions.shape == (PADDED, spec.action_horizon, spec.action_dim)
    assert np.issubdtype(actions.dtype, np.floating)
    assert np.isfinite(actions).all()


def test_an_episodes_actions_do_not_depend_on_its_neighbours_or_on_padding(family):
    _, example, policy = family
    policy.reset(PADDED)
    alone = [act(policy, example, [21], [True])[0], act(policy, example, [21], [False])[0]]
    policy.reset(PADDED)
    mixed = [
        act(policy, example, [31, 21, 32], [True] * 3)[1],
        act(policy, example, [31, 21, 32], [False] * 3)[1],
    ]
    for query in range(2):
        np.testing.assert_allclose(mixed[query], alone[query], **TOL)


def test_a_restarted_episode_reproduces_its_first_chunk(family):
    _, example, policy = family
    policy.reset(PADDED)
    first = act(policy, example, [41, 42], [True, True])
    act(policy, example, [41, 42], [False, False])
    # Episode 41 restarts (rescheduled on a fresh worker) while 42 goes on.
    again = act(policy, example, [41, 42], [True, False])
    np.testing.assert_allclose(again[0], first[0], **TOL)


def test_a_stochastic_family_keeps_its_episode_state_in_episode_streams(family):
    """Two episodes with the same observation differ only by their seed's stream; where they
    do, the streams must live in the one helper that restarts and forgets them."""
    name, example, policy = family
    policy.reset(PADDED)
    rows = act(policy, example, [51, 52], [True, True], obs_seeds=[51, 51])
    if not np.allclose(rows[0], rows[1], **TOL):
        assert streams(policy), (
            f"{name} draws per-episode noise but keeps no policies.base.EpisodeStreams"
        )


def held_items(policy: Policy) -> int:
    """Entries in the containers a policy holds directly: where a per-episode leak shows."""
    return sum(
        len(v) for v in vars(policy).values() if isinstance(v, dict | list | set | EpisodeStreams)
    )


def test_episode_state_stays_bounded_over_a_thousand_padded_calls(family):
    """Three live episodes; each call one ends and a new one starts, padded as the runner pads.
    Live streams never exceed the running episodes (ended ones and padding rows are forgotten),
    and nothing else the policy holds grows with the number of episodes."""
    _, example, policy = family
    held = streams(policy)
    policy.reset(PADDED)
    obs = dict(example.observations(policy.spec, [0, 1, 2]))
    size = PADDED if policy.pad_batch else 3
    with example.cheap_network(policy):
        for call in range(1000):
            seeds = [call, call + 1, call + 2]
            tasks = example.tasks(seeds, [call == 0, call == 0, True])
            policy.act(*pad_batch(obs, tasks, 3, size))
            if held:
                live = sorted(seed for helper in held for seed in helper)
                assert live == seeds, f"call {call}: live episode state {live[:8]}..."
            if call == 9:
                after_ten = held_items(policy)
    assert held_items(policy) - after_ten < 10, "per-episode state grows with the episodes"


def test_a_non_strict_load_is_reported_once_as_a_non_strict_load_warning(family, tmp_path, capsys):
    name, example, _ = family
    if example.non_strict is None:
        pytest.skip(f"{name} loads no weights")
    text = example.non_strict(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_policy(text)
    reports = [w for w in caught if issubclass(w.category, NonStrictLoadWarning)]
    assert len(reports) == 1, [str(w.message) for w in caught]
    assert "loaded non-strictly" in str(reports[0].message)
    assert "compatibility report" in str(reports[0].message)
    assert capsys.readouterr().out == ""  # not printed besides


def test_an_unknown_option_is_named(family):
    _, example, _ = family
    joiner = "&" if "?" in example.policy else "?"
    with pytest.raises(ValueError, match=r"no option\(s\) \['no_such_option'\]; known: "):
        load_policy(f"{example.policy}{joiner}no_such_option=1")
