"""Spec tests for evalharness.policies: policy strings, the registry, built-ins, output checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from evalharness.policies import (
    Policy,
    PolicyOutputError,
    PolicyRef,
    PolicySpec,
    PolicyStringError,
    check_actions,
    known_policies,
    load_policy,
    parse_policy_string,
    register_policy,
    registry,
)
from evalharness.policies.builtin import RandomPolicy, ZeroPolicy
from evalharness.policies.common.compat import CheckpointError


def batch(seeds: list[int], instruction: str = "put the bowl on the plate") -> tuple[dict, dict]:
    """A minimal batch (window 1, 8 x 8 images) for len(seeds) episodes."""
    b = len(seeds)
    obs = {
        "image_primary": np.zeros((b, 1, 8, 8, 3), np.uint8),
        "image_wrist": np.zeros((b, 1, 8, 8, 3), np.uint8),
        "proprio": np.zeros((b, 1, 8), np.float32),
        "timestep_pad_mask": np.ones((b, 1), bool),
    }
    tasks = {
        "language_instruction": [instruction] * b,
        "episode_seed": np.array(seeds, dtype=np.int64),
    }
    return obs, tasks


# --------------------------------------------------------------------------------------------
# Policy strings
# --------------------------------------------------------------------------------------------


def test_a_bare_name_parses_to_the_name_only():
    assert parse_policy_string("zero") == PolicyRef(name="zero", path=None, options={})


def test_path_may_contain_colons_and_options_are_strings():
    ref = parse_policy_string("octo_jax:/a/b:c?x=1&y=two")
    assert ref == PolicyRef(name="octo_jax", path="/a/b:c", options={"x": "1", "y": "two"})
    assert str(ref) == "octo_jax:/a/b:c?x=1&y=two"


def test_options_without_a_path():
    ref = parse_policy_string("random?action_horizon=4&exec_horizon=2")
    assert ref == PolicyRef("random", None, {"action_horizon": "4", "exec_horizon": "2"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"empty policy string; expected NAME\[:PATH\]\[\?key=value&\.\.\.\]"),
        ("   ", "empty policy string"),
        (":x", r"malformed policy string ':x': the name '' must be letters, digits, _ or -"),
        ("ze ro", "the name 'ze ro' must be letters, digits, _ or -"),
        ("zero:", r"malformed policy string 'zero:': nothing after ':'"),
        ("zero?x", r"malformed options 'x' in policy string 'zero\?x': expected key=value"),
        ("zero?x=1&&y=2", "malformed options 'x=1&&y=2'"),
        ("zero?x=1&x=2", r"option 'x' given twice in policy string 'zero\?x=1&x=2'"),
    ],
)
def test_malformed_policy_strings_are_refused_saying_what_is_wrong(text, message):
    with pytest.raises(PolicyStringError, match=message):
        parse_policy_string(text)


def test_policy_string_error_is_a_value_error():
    assert issubclass(PolicyStringError, ValueError)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_the_built_ins_are_known():
    assert {"random", "zero"} <= set(known_policies())
    assert known_policies() == sorted(known_policies())


def test_an_unknown_policy_name_lists_the_known_ones():
    with pytest.raises(PolicyStringError, match=r"unknown policy 'nope' in 'nope:/x'") as excinfo:
        load_policy("nope:/x")
    message = str(excinfo.value)
    assert "known policies: " in message
    assert "random" in message
    assert "zero" in message


def test_a_name_cannot_be_registered_twice_for_another_factory():
    known_policies()  # registers the built-ins
    with pytest.raises(ValueError, match="policy name 'zero' is already registered"):
        register_policy("zero", lambda path=None, **options: None)


def test_a_lazy_entry_is_imported_on_first_load(family):
    family(registry.PolicyFamily("lazy_zero", "", "evalharness.policies.builtin:make_zero"))
    policy = load_policy("lazy_zero?action_horizon=2")
    assert isinstance(policy, ZeroPolicy)
    assert policy.spec.action_horizon == 2


def _checkpoint_with_spec(root, orientation):
    """A finetune output: a checkpoint file and the dataset_spec.json written beside it."""
    from evalharness.data.spec import LIBERO

    root.mkdir(parents=True, exist_ok=True)
    (root / "model.bin").write_bytes(b"weights")
    spec = dataclasses.replace(LIBERO, name="raw_libero", model_orientation=orientation)
    (root / "dataset_spec.json").write_text(json.dumps(spec.to_dict()))
    return root


@pytest.fixture
def family():
    """Registers families for one test: `family(PolicyFamily(...))`; removed afterwards."""
    added: list[str] = []

    def add(entry: registry.PolicyFamily) -> registry.PolicyFamily:
        added.append(entry.name)
        return registry.register_family(entry)

    yield add
    for name in added:
        registry.unregister_family(name)


def _ckpt_zero(path=None, **options):
    return ZeroPolicy(PolicySpec("z"))


def test_a_finetuned_checkpoint_is_shown_frames_in_its_training_orientation(family, tmp_path):
    from evalharness.protocols import get_protocol
    from evalharness.runner import RunConfig, env_config

    family(registry.PolicyFamily("ckpt_zero", "", _ckpt_zero))
    raw = _checkpoint_with_spec(tmp_path / "raw", "raw")
    upright = _checkpoint_with_spec(tmp_path / "upright", "upright")
    assert load_policy(f"ckpt_zero:{raw / 'model.bin'}").spec.image_orientation == "raw"
    assert load_policy(f"ckpt_zero:{raw}").spec.image_orientation == "raw"
    step_dir = raw / "5000"
    step_dir.mkdir()
    assert load_policy(f"ckpt_zero:{step_dir}").spec.image_orientation == "raw"
    assert load_policy(f"ckpt_zero:{upright}").spec.image_orientation == "upright"
    assert load_policy(f"ckpt_zero:{tmp_path}").spec.image_orientation == "upright"  # no spec
    config = RunConfig(
        suite="libero_spatial", policy="zero", out_dir=tmp_path, protocol=get_protocol("openvla")
    )
    assert env_config(config, load_policy(f"ckpt_zero:{raw}")).image_orientation == "raw"


def test_a_broken_dataset_spec_beside_a_checkpoint_names_the_file(family, tmp_path):
    family(registry.PolicyFamily("ckpt_zero", "", _ckpt_zero))
    (tmp_path / "dataset_spec.json").write_text('{"model_orientation": "sideways"}')
    with pytest.raises(
        CheckpointError, match=r"dataset_spec\.json: model_orientation is 'sideways'"
    ):
        load_policy(f"ckpt_zero:{tmp_path}")
    (tmp_path / "dataset_spec.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"dataset_spec\.json: not readable JSON"):
        load_policy(f"ckpt_zero:{tmp_path}")


# --------------------------------------------------------------------------------------------
# Built-in policies
# --------------------------------------------------------------------------------------------


def test_zero_policy_outputs_zero_chunks_of_the_declared_shape():
    policy = load_policy("zero?action_horizon=3")
    assert isinstance(policy, Policy)
    assert policy.spec == PolicySpec(name="zero", action_horizon=3, exec_horizon=3)
    obs, tasks = batch([1, 2])
    actions = policy.act(obs, tasks)
    assert actions.shape == (2, 3, 7)
    np.testing.assert_array_equal(actions, np.zeros((2, 3, 7)))
    np.testing.assert_array_equal(check_actions(policy, actions, 2), actions)


def test_default_spec_is_one_action_per_query():
    spec = load_policy("random").spec
    assert (spec.window_size, spec.action_horizon, spec.action_dim) == (1, 1, 7)
    assert spec.exec_horizon == 1
    assert spec.resolved_exec_horizon == 1


def test_horizon_options_are_reflected_in_the_spec():
    spec = load_policy("random?action_horizon=4&exec_horizon=2").spec
    assert spec.name == "random"
    assert spec.action_horizon == 4
    assert spec.exec_horizon == 2
    assert spec.resolved_exec_horizon == 2


def test_random_policy_actions_lie_in_the_action_box():
    policy = load_policy("random?action_horizon=5")
    obs, tasks = batch([0, 1, 2, 3])
    actions = policy.act(obs, tasks)
    assert actions.shape == (4, 5, 7)
    assert actions.min() >= -1.0
    assert actions.max() <= 1.0
    assert actions.std() > 0.3  # not constant


def test_random_policy_actions_depend_on_the_episode_seed_only_not_the_batch():
    alone = load_policy("random?action_horizon=2")
    mixed = load_policy("random?action_horizon=2")
    alone.reset(1)
    mixed.reset(3)
    for _query in range(2):
        a = alone.act(*batch([5]))
        m = mixed.act(*batch([9, 5, 2]))
        np.testing.assert_array_equal(a[0], m[1])

    # Order within the batch does not matter either.
    first = load_policy("random").act(*batch([2, 9]))
    swapped = load_policy("random").act(*batch([9, 2]))
    np.testing.assert_array_equal(first[0], swapped[1])
    np.testing.assert_array_equal(first[1], swapped[0])


def test_random_policy_first_chunk_is_the_seeds_first_draw():
    actions = load_policy("random?action_horizon=2").act(*batch([5]))
    expected = np.random.default_rng(5).uniform(-1.0, 1.0, size=(2, 7))
    np.testing.assert_array_equal(actions[0], expected)


def test_random_policy_successive_queries_continue_the_stream_and_seeds_differ():
    policy = load_policy("random")
    q1 = policy.act(*batch([5, 6]))
    q2 = policy.act(*batch([5, 6]))
    assert not np.array_equal(q1[0], q2[0])  # the next draw, not a repeat
    assert not np.array_equal(q1[0], q1[1])  # seed 5 and seed 6 differ


def test_random_policy_reset_restarts_every_stream():
    policy = load_policy("random")
    before = policy.act(*batch([5]))
    policy.act(*batch([5]))
    policy.reset(1)
    np.testing.assert_array_equal(policy.act(*batch([5])), before)


def test_built_ins_are_the_expected_classes():
    assert isinstance(load_policy("zero"), ZeroPolicy)
    assert isinstance(load_policy("random"), RandomPolicy)
    assert load_policy("zero").checkpoint == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "zero?action_horizon=abc",
            r"policy 'zero': option action_horizon='abc' must be an integer",
        ),
        (
            "random?exec_horizon=1.5",
            r"policy 'random': option exec_horizon='1\.5' must be an integer",
        ),
        ("zero?action_horizon=0", r"PolicySpec\.action_horizon must be an int >= 1, got 0"),
        (
            "random?action_horizon=2&exec_horizon=3",
            r"PolicySpec\.exec_horizon must be in 1\.\.action_horizon \(2\), got 3",
        ),
        ("zero?temperature=1", r"policy 'zero' has no option\(s\) \['temperature'\]; known: "),
        ("random:/ckpt/dir", "policy 'random' takes no checkpoint path, got '/ckpt/dir'"),
    ],
)
def test_bad_built_in_options_are_refused_naming_them(text, message):
    with pytest.raises(ValueError, match=message):
        load_policy(text)


# --------------------------------------------------------------------------------------------
# check_actions
# --------------------------------------------------------------------------------------------


class Fixed(Policy):
    """Returns whatever it was given, under a spec with horizon 4."""

    def __init__(self, actions: object) -> None:
        self.spec = PolicySpec(name="fixed", action_horizon=4)
        self.actions = actions

    def act(self, obs, tasks):  # type: ignore[no-untyped-def]
        return self.actions


def test_check_actions_accepts_the_declared_shape_as_float64():
    policy = Fixed(np.zeros((2, 4, 7), np.float32))
    out = check_actions(policy, policy.act({}, {}), 2)
    assert out.shape == (2, 4, 7)
    assert out.dtype == np.float64


@pytest.mark.parametrize(
    "shape",
    [(2, 4), (2, 1, 7), (3, 4, 7), (2, 4, 6), (2, 4, 7, 1)],
)
def test_a_wrong_shape_names_the_policy_the_expected_and_the_received_shape(shape):
    policy = Fixed(np.zeros(shape))
    with pytest.raises(PolicyOutputError) as excinfo:
        check_actions(policy, policy.act({}, {}), 2)
    message = str(excinfo.value)
    assert "policy 'fixed'" in message
    assert f"returned actions of shape {shape}" in message
    assert "expected (2, 4, 7)" in message
    assert "(batch, action_horizon, action_dim)" in message


@pytest.mark.parametrize(("bad", "shown"), [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_a_non_finite_action_is_refused_naming_where_and_what(bad, shown):
    actions = np.zeros((2, 4, 7))
    actions[1, 2, 6] = bad
    policy = Fixed(actions)
    with pytest.raises(
        PolicyOutputError,
        match=rf"policy 'fixed' returned a non-finite action at index \[1, 2, 6\]: {shown}$",
    ):
        check_actions(policy, actions, 2)


def test_a_non_numeric_output_is_refused():
    policy = Fixed([["left"] * 7] * 4)
    with pytest.raises(
        PolicyOutputError, match=r"policy 'fixed' returned list, which is not a numeric array"
    ):
        check_actions(policy, policy.actions, 1)


def test_policy_output_error_is_a_runtime_error():
    assert issubclass(PolicyOutputError, RuntimeError)


# --------------------------------------------------------------------------------------------
# PolicySpec validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_size": 0}, r"PolicySpec\.window_size must be an int >= 1, got 0"),
        ({"action_horizon": 0}, r"PolicySpec\.action_horizon must be an int >= 1, got 0"),
        ({"action_dim": 2.0}, r"PolicySpec\.action_dim must be an int >= 1, got 2\.0"),
        (
            {"action_horizon": 4, "exec_horizon": 5},
            r"PolicySpec\.exec_horizon must be in 1\.\.action_horizon \(4\), got 5",
        ),
        ({"action_horizon": 4, "exec_horizon": 0}, r"exec_horizon must be in 1\.\.action_horizon"),
        (
            {"image_sizes": {"image_primary": (0, 224)}},
            r"PolicySpec\.image_sizes\['image_primary'\] must be \(h, w\) > 0, got \(0, 224\)",
        ),
        ({"image_sizes": {"image_wrist": (128,)}}, r"image_sizes\['image_wrist'\]"),
        ({"image_orientation": "flipped"}, r"image_orientation must be 'upright' or 'raw'"),
    ],
)
def test_policy_spec_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicySpec(name="p", **kwargs)


def test_exec_horizon_defaults_to_the_whole_chunk():
    spec = PolicySpec(name="p", action_horizon=8)
    assert spec.exec_horizon is None
    assert spec.resolved_exec_horizon == 8
    assert PolicySpec(name="p", action_horizon=8, exec_horizon=3).resolved_exec_horizon == 3
