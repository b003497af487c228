"""Datasets for finetuning: readers, specs, windows/chunks, statistics, dtype checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalharness.data import (
    LIBERO,
    LIBERO_RLDS,
    BatchSampler,
    DatasetError,
    DatasetSpec,
    compute_statistics,
    episode_samples,
    get_spec,
    make_sample,
    noop_mask,
    normalize_batch,
    open_dataset,
    pad_action_dim,
    read_libero_hdf5,
    read_rlds_raw,
    standardize_episode,
    write_rlds,
    write_tiny_libero_hdf5,
    write_tiny_rlds,
)
from evalharness.data.checks import as_float32, as_int32
from evalharness.data.tfrecord import crc32c, decode_example, encode_example, iter_records
from evalharness.data.tiny import MARKER
from evalharness.envs.libero import upright
from evalharness.policies.common.normalization import ArrayStatistics, convert_gripper


def _episode(actions: np.ndarray, proprio: np.ndarray | None = None) -> dict:
    """A hand-made standard episode whose 'image' is the step index, for exact checks."""
    steps = len(actions)
    images = np.zeros((steps, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(steps)
    episode = {
        "image_primary": images,
        "action": np.asarray(actions, dtype=np.float32),
        "language_instruction": "do it",
        "episode_id": "hand:0",
        "source": "hand",
    }
    if proprio is not None:
        episode["proprio"] = np.asarray(proprio, dtype=np.float32)
    return episode


def _ramp_episode(steps: int, action_dim: int = 2) -> dict:
    actions = np.arange(steps * action_dim, dtype=np.float32).reshape(steps, action_dim)
    return _episode(actions, proprio=np.arange(steps, dtype=np.float32)[:, None])


# --------------------------------------------------------------------------- HDF5


def test_libero_hdf5_round_trip_gives_the_written_arrays_upright_and_converted(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "task_demo.hdf5", num_demos=2, steps=5, seed=3)
    episodes = list(read_libero_hdf5(path, LIBERO))
    assert [e["episode_id"] for e in episodes] == ["task_demo.hdf5:demo_0", "task_demo.hdf5:demo_1"]
    with h5py.File(path) as f:
        demo = f["data/demo_1"]
        stored_primary = demo["obs/agentview_rgb"][()]
        expected_proprio = np.concatenate(
            [demo["obs/ee_states"][()], demo["obs/gripper_states"][()]], axis=1
        ).astype(np.float32)
        stored_actions = demo["actions"][()]
    ep = episodes[1]
    assert ep["image_primary"].dtype == np.uint8 and ep["image_primary"].shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(ep["image_primary"], stored_primary[:, ::-1, ::-1])
    np.testing.assert_array_equal(ep["proprio"], expected_proprio)
    assert ep["proprio"].dtype == np.float32 and ep["action"].dtype == np.float32
    np.testing.assert_array_equal(ep["action"][:, :6], stored_actions[:, :6].astype(np.float32))
    np.testing.assert_array_equal(ep["action"][:, 6], 1.0 - np.clip(stored_actions[:, 6], 0, 1))
    assert ep["language_instruction"] == "put the tiny red block on the target"


def test_orientation_flip_is_applied_exactly_once_and_matches_the_env(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=1, steps=3)
    (episode,) = read_libero_hdf5(path, LIBERO)
    # The tiny writer draws a red marker top-left in the upright frame.
    np.testing.assert_array_equal(
        episode["image_primary"][:, :2, :2], np.broadcast_to(MARKER, (3, 2, 2, 3))
    )
    with h5py.File(path) as f:
        raw = f["data/demo_0/obs/agentview_rgb"][()]
    np.testing.assert_array_equal(episode["image_primary"][0], upright(raw[0]))
    # Trained on raw frames: no flip in the reader, a flip at evaluation instead.
    raw_spec = LIBERO.replace(model_orientation="raw")
    (raw_episode,) = read_libero_hdf5(path, raw_spec)
    np.testing.assert_array_equal(raw_episode["image_primary"], raw)
    assert (LIBERO.image_transform, LIBERO.eval_image_transform) == ("rot180", "none")
    assert (raw_spec.image_transform, raw_spec.eval_image_transform) == ("none", "rot180")


def test_robomimic_preset_reads_joint_and_gripper_states_raw_frames_and_libero_gripper(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "r_demo.hdf5", num_demos=1, steps=3)
    (episode,) = read_libero_hdf5(path, get_spec("libero_robomimic"))
    with h5py.File(path) as f:
        demo = f["data/demo_0"]
        raw = demo["obs/agentview_rgb"][()]
        proprio = np.concatenate([demo["obs/joint_states"][()], demo["obs/gripper_states"][()]], -1)
        actions = demo["actions"][()]
    np.testing.assert_array_equal(episode["image_primary"], raw)  # kept as stored
    np.testing.assert_allclose(episode["proprio"], proprio.astype(np.float32))
    np.testing.assert_array_equal(episode["action"], actions.astype(np.float32))  # −1/+1 kept


def test_demos_are_read_in_numeric_order(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=3, steps=2)
    with h5py.File(path, "a") as f:
        f.move("data/demo_2", "data/demo_10")
        f.move("data/demo_1", "data/demo_2")
    ids = [e["episode_id"].split(":")[1] for e in read_libero_hdf5(path, LIBERO)]
    assert ids == ["demo_0", "demo_2", "demo_10"]


def test_a_folder_reads_its_demo_files_in_name_order(tmp_path):
    write_tiny_libero_hdf5(tmp_path / "b_demo.hdf5", num_demos=1, steps=2, language_instruction="b")
    write_tiny_libero_hdf5(tmp_path / "a_demo.hdf5", num_demos=2, steps=2, language_instruction="a")
    ds = open_dataset(tmp_path, "libero")
    assert [e["language_instruction"] for e in ds.episodes()] == ["a", "a", "b"]


def test_missing_key_names_the_file_the_demo_and_the_available_keys(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=2, steps=2)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/eye_in_hand_rgb"]
    with pytest.raises(DatasetError) as err:
        list(read_libero_hdf5(path, LIBERO))
    message = str(err.value)
    assert str(path) in message and "data/demo_1" in message
    assert "'obs/eye_in_hand_rgb'" in message and "obs/agentview_rgb" in message


def test_missing_problem_info_names_the_attribute(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=1, steps=2)
    with h5py.File(path, "a") as f:
        del f["data"].attrs["problem_info"]
    with pytest.raises(DatasetError, match="problem_info"):
        list(read_libero_hdf5(path, LIBERO))


def test_object_dtype_field_fails_with_the_key_and_a_sample(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=1, steps=2)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/gripper_states"]
        f["data/demo_0/obs"].create_dataset(
            "gripper_states",
            data=np.array(["open", "shut"], dtype=object),
            dtype=h5py.string_dtype(),
        )
    with pytest.raises(DatasetError) as err:
        list(read_libero_hdf5(path, LIBERO))
    message = str(err.value)
    assert "'obs/gripper_states'" in message and "object" in message and "b'open'" in message


def test_float64_is_converted_and_int64_out_of_int32_range_is_rejected():
    converted = as_float32(np.array([[0.5, -1.25]], dtype=np.float64), "f.hdf5", "actions")
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, [[0.5, -1.25]])
    assert as_int32(np.array([7, -2], dtype=np.int64), "f", "ids").dtype == np.int32
    with pytest.raises(DatasetError, match=r"'ids'.*3000000000.*int64.*int32"):
        as_int32(np.array([1, 3_000_000_000], dtype=np.int64), "f", "ids")
    with pytest.raises(DatasetError, match=r"'actions'.*strings.*'a'"):
        as_float32(np.array(["a", "b"]), "f", "actions")
    with pytest.raises(DatasetError, match=r"does not fit in float32"):
        as_float32(np.array([1e300]), "f", "actions")
    with pytest.raises(DatasetError, match=r"non-finite value nan at index \[1\]"):
        as_float32(np.array([0.0, np.nan]), "f", "actions")


def test_wrong_action_width_and_disagreeing_lengths_are_reported(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=1, steps=3, action_dim=10)
    with pytest.raises(DatasetError, match=r"10 dims per step.*action_dim=7"):
        list(read_libero_hdf5(path, LIBERO))
    ten = list(read_libero_hdf5(path, LIBERO.replace(action_dim=10)))
    assert ten[0]["action"].shape == (3, 10)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/ee_states"]
        f["data/demo_0/obs/ee_states"] = np.zeros((2, 6))
    with pytest.raises(DatasetError, match=r"disagree on the number of steps.*obs/ee_states: 2"):
        list(read_libero_hdf5(path, LIBERO.replace(action_dim=10)))


_NAMES = st.sampled_from(
    [
        "data",
        "demo_0",
        "demo_1",
        "demo_x",
        "obs",
        "actions",
        "agentview_rgb",
        "eye_in_hand_rgb",
        "ee_states",
        "gripper_states",
    ]
)
_ARRAYS = st.one_of(
    st.builds(lambda s: np.zeros(s, np.uint8), st.lists(st.integers(0, 4), max_size=4).map(tuple)),
    st.builds(lambda s: np.ones(s, np.float64), st.lists(st.integers(0, 8), max_size=3).map(tuple)),
    st.builds(lambda n: np.arange(n, dtype=np.int64) * 2**40, st.integers(0, 3)),
    st.just(np.array([b"x", b"y"])),
)


def _tree(depth: int):
    leaf = _ARRAYS
    if depth == 0:
        return st.dictionaries(_NAMES, leaf, max_size=3)
    return st.dictionaries(_NAMES, st.one_of(leaf, _tree(depth - 1)), max_size=4)


def _write_tree(group: h5py.Group, tree: dict) -> None:
    for name, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(name), value)
        else:
            group[name] = value


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tree=_tree(3),
    info=st.sampled_from([None, "not json", '{"language_instruction": "go"}', "[1]"]),
    base=st.booleans(),
)
def test_random_hdf5_structures_read_or_raise_dataset_error(tmp_path, tree, info, base):
    path = tmp_path / "fuzz_demo.hdf5"
    if base:
        write_tiny_libero_hdf5(path, num_demos=2, steps=3, image_size=8)
        with h5py.File(path, "a") as f:
            target = f["data/demo_1"]
            for name in list(tree):
                if name in target:
                    del target[name]
            _write_tree(target, tree)
    else:
        with h5py.File(path, "w") as f:
            _write_tree(f, tree)
            if info is not None and "data" in f and isinstance(f["data"], h5py.Group):
                f["data"].attrs["problem_info"] = info
    try:
        for episode in read_libero_hdf5(path, LIBERO):
            assert episode["action"].dtype == np.float32
    except DatasetError:
        pass


# --------------------------------------------------------------------------- RLDS / TFRecord


def test_crc32c_matches_the_reference_vector_and_the_bytewise_definition():
    assert crc32c(b"123456789") == 0xE3069283
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    assert crc32c(data) == crc ^ 0xFFFFFFFF


def test_example_codec_agrees_with_protobuf_in_both_directions():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="ex.proto", package="tf", syntax="proto3")
    for name, field_type, packed in (
        ("BytesList", 12, False),
        ("FloatList", 2, True),
        ("Int64List", 3, True),
    ):
        msg = file.message_type.add(name=name)
        f = msg.field.add(name="value", number=1, label=3, type=field_type)
        f.options.packed = packed
    feature = file.message_type.add(name="Feature")
    for i, name in enumerate(("bytes_list", "float_list", "int64_list")):
        feature.field.add(
            name=name,
            number=i + 1,
            label=1,
            type=11,
            type_name=f".tf.{['BytesList', 'FloatList', 'Int64List'][i]}",
            oneof_index=0,
        )
    feature.oneof_decl.add(name="kind")
    features = file.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=1, type=9)
    entry.field.add(name="value", number=2, label=1, type=11, type_name=".tf.Feature")
    entry.options.map_entry = True
    features.field.add(
        name="feature", number=1, label=3, type=11, type_name=".tf.Features.FeatureEntry"
    )
    example = file.message_type.add(name="Example")
    example.field.add(name="features", number=1, label=1, type=11, type_name=".tf.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    Example = message_factory.GetMessageClass(pool.FindMessageTypeByName("tf.Example"))

    ours = encode_example(
        {
            "steps/action": ("float", np.array([0.5, -2.0, 3.25], np.float32)),
            "steps/is_first": ("int64", np.array([1, 0, -5])),
            "steps/language_instruction": ("bytes", [b"pick", b""]),
        }
    )
    parsed = Example.FromString(ours)
    assert list(parsed.features.feature["steps/action"].float_list.value) == [0.5, -2.0, 3.25]
    assert list(parsed.features.feature["steps/is_first"].int64_list.value) == [1, 0, -5]
    assert list(parsed.features.feature["steps/language_instruction"].bytes_list.value) == [
        b"pick",
        b"",
    ]

    theirs = Example()
    theirs.features.feature["a"].float_list.value.extend([1.5, 2.5])
    theirs.features.feature["b"].int64_list.value.extend([2**40, -1])
    theirs.features.feature["c"].bytes_list.value.append(b"\x00\xff")
    decoded = decode_example(theirs.SerializeToString())
    np.testing.assert_array_equal(decoded["a"][1], [1.5, 2.5])
    np.testing.assert_array_equal(decoded["b"][1], [2**40, -1])
    assert decoded["c"] == ("bytes", [b"\x00\xff"])


def test_unpacked_repeated_numbers_decode_like_packed_ones():
    # Int64List {value: 3, value: 4}, FloatList {value: 1.0} written unpacked.
    int_list = bytes([0x08, 3, 0x08, 4])
    float_list = bytes([0x0D]) + np.float32(1.0).tobytes()

    def length_delimited(number, body):
        return bytes([(number << 3) | 2, len(body)]) + body

    def entry(name, kind_number, body):
        feature = length_delimited(kind_number, body)
        return length_delimited(
            1, length_delimited(1, name.encode()) + length_delimited(2, feature)
        )

    payload = length_delimited(1, entry("i", 3, int_list) + entry("f", 2, float_list))
    decoded = decode_example(payload)
    np.testing.assert_array_equal(decoded["i"][1], [3, 4])
    np.testing.assert_array_equal(decoded["f"][1], [1.0])


def test_rlds_round_trip_gives_identical_arrays(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [
        {
            "steps": {
                "observation": {
                    "image": rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
                    "state": rng.normal(size=(n, 8)).astype(np.float32),
                },
                "action": rng.normal(size=(n, 7)).astype(np.float32),
                "language_instruction": [f"task {n}"] * n,
                "count": np.arange(n, dtype=np.int64) - 2,
            },
            "episode_metadata": {"file_path": f"demo_{n}.hdf5"},
        }
        for n in (3, 1, 4)
    ]
    version_dir = write_rlds(tmp_path, "toy", episodes, num_shards=2)
    assert version_dir == tmp_path / "toy" / "1.0.0"
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["splits"][0]["shardLengths"] == ["1", "2"]
    read = [flat for _, flat in read_rlds_raw(tmp_path / "toy")]
    assert len(read) == 3
    for written, flat in zip(episodes, read, strict=True):
        steps = written["steps"]
        np.testing.assert_array_equal(
            flat["steps/observation/image"], steps["observation"]["image"]
        )
        np.testing.assert_array_equal(
            flat["steps/observation/state"], steps["observation"]["state"]
        )
        np.testing.assert_array_equal(flat["steps/action"], steps["action"])
        np.testing.assert_array_equal(flat["steps/count"], steps["count"])
        assert list(flat["steps/language_instruction"]) == steps["language_instruction"]
        assert flat["episode_metadata/file_path"] == written["episode_metadata"]["file_path"]
        first = np.zeros(len(steps["action"]), bool)
        first[0] = True
        np.testing.assert_array_equal(flat["steps/is_first"], first)


def test_libero_rlds_preset_reads_openvla_layout_without_flipping_again(tmp_path):
    version_dir = write_tiny_rlds(tmp_path, num_episodes=2, steps=4, seed=1)
    episodes = list(open_dataset(version_dir, "libero_rlds").episodes())
    flat = next(iter(read_rlds_raw(version_dir)))[1]
    ep = episodes[0]
    np.testing.assert_array_equal(ep["image_primary"], flat["steps/observation/image"])
    np.testing.assert_array_equal(
        ep["image_primary"][:, :2, :2], np.broadcast_to(MARKER, (4, 2, 2, 3))
    )
    np.testing.assert_array_equal(ep["proprio"], flat["steps/observation/state"])
    np.testing.assert_array_equal(
        ep["action"][:, -1], 1.0 - np.clip(flat["steps/action"][:, -1], 0.0, 1.0)
    )
    assert ep["language_instruction"] == "put the tiny red block on the target"


def test_tiny_hdf5_and_rlds_with_the_same_seed_hold_the_same_episodes(tmp_path):
    hdf5 = list(
        open_dataset(
            write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", 2, 5, seed=4), "libero"
        ).episodes()
    )
    rlds = list(
        open_dataset(write_tiny_rlds(tmp_path / "r", 2, 5, seed=4), "libero_rlds").episodes()
    )
    for a, b in zip(hdf5, rlds, strict=True):
        for key in ("image_primary", "image_wrist", "proprio", "action"):
            np.testing.assert_array_equal(a[key], b[key])


def test_jpeg_rlds_decodes_close_to_the_original(tmp_path):
    version_dir = write_tiny_rlds(tmp_path, num_episodes=1, steps=2, image_encoding="jpeg")
    features = json.loads((version_dir / "features.json").read_text())
    obs = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"][
        "features"
    ]["observation"]
    assert obs["featuresDict"]["features"]["image"]["image"]["encodingFormat"] == "jpeg"
    png = next(open_dataset(write_tiny_rlds(tmp_path / "p", 1, 2), "libero_rlds").episodes())
    jpg = next(open_dataset(version_dir, "libero_rlds").episodes())
    diff = np.abs(png["image_primary"].astype(int) - jpg["image_primary"].astype(int))
    assert diff.mean() < 6


def test_corrupt_tfrecord_fails_its_checksum(tmp_path):
    version_dir = write_tiny_rlds(tmp_path, num_episodes=1, steps=2)
    (shard,) = version_dir.glob("*.tfrecord*")
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="data checksum"):
        list(iter_records(shard))
    shard.write_bytes(bytes(data[:30]))
    with pytest.raises(DatasetError, match="truncated"):
        list(iter_records(shard))


def test_rlds_missing_step_feature_names_the_available_ones(tmp_path):
    version_dir = write_tiny_rlds(tmp_path, num_episodes=1, steps=2)
    spec = LIBERO_RLDS.replace(
        image_keys={"image_primary": "observation/agentview"}, image_sizes={}
    )
    with pytest.raises(DatasetError, match=r"'observation/agentview'.*observation/image"):
        list(open_dataset(version_dir, spec).episodes())


def test_a_spec_for_the_other_format_says_which_preset_to_use(tmp_path):
    version_dir = write_tiny_rlds(tmp_path, num_episodes=1, steps=2)
    with pytest.raises(DatasetError, match="libero_rlds"):
        open_dataset(version_dir, "libero")


# --------------------------------------------------------------------------- specs


def test_spec_round_trips_through_to_dict_and_json():
    spec = LIBERO.replace(image_sizes={"image_primary": (16, 16)}, filter_noops=True)
    restored = DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    assert spec.to_dict()["image_transform"] == "rot180"
    assert get_spec("libero_rlds") is LIBERO_RLDS


def test_unknown_spec_keys_name_the_key_and_the_available_ones():
    with pytest.raises(DatasetError, match=r"unknown key 'imgae_keys'.*image_keys"):
        DatasetSpec.from_dict({"base": "libero", "imgae_keys": {}})
    with pytest.raises(DatasetError, match=r"unknown dataset spec 'liberoo'.*libero, libero_rlds"):
        get_spec("liberoo")
    with pytest.raises(DatasetError, match=r"stored_orientation = 'sideways'"):
        LIBERO.replace(stored_orientation="sideways")
    with pytest.raises(DatasetError, match=r"image_sizes = 'image_depth'"):
        LIBERO.replace(image_sizes={"image_depth": (8, 8)})
    with pytest.raises(DatasetError, match=r"contradicts"):
        DatasetSpec.from_dict({**LIBERO.to_dict(), "image_transform": "none"})


def test_image_sizes_resize_with_lanczos(tmp_path):
    path = write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", num_demos=1, steps=2, image_size=32)
    spec = LIBERO.replace(image_sizes={"image_primary": (16, 24)})
    (episode,) = read_libero_hdf5(path, spec)
    assert episode["image_primary"].shape == (2, 16, 24, 3)
    assert episode["image_wrist"].shape == (2, 32, 32, 3)


# --------------------------------------------------------------------------- gripper, no-ops


def test_gripper_is_converted_from_libero_to_octo_convention():
    spec = LIBERO.replace(image_keys={}, proprio_keys=(), proprio_dims=(), image_sizes={})
    actions = np.zeros((3, 7))
    actions[:, 6] = [-1.0, 1.0, 0.25]
    ep = standardize_episode({"actions": actions}, "x", spec, "mem", "0")
    np.testing.assert_array_equal(ep["action"][:, 6], [1.0, 0.0, 0.75])
    np.testing.assert_array_equal(
        ep["action"][:, 6], convert_gripper(actions[:, 6], "libero", "octo")
    )
    same = standardize_episode(
        {"actions": actions}, "x", spec.replace(gripper_for_model="libero"), "mem", "0"
    )
    np.testing.assert_array_equal(same["action"][:, 6], actions[:, 6])


def test_noop_filter_follows_openvla_rule_on_a_hand_made_episode():
    arm_still, arm_moving = [0.0] * 6, [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    actions = np.array(
        [
            [*arm_still, -1.0],  # 0: first action, still -> dropped (norm only)
            [*arm_moving, -1.0],  # 1: moves -> kept
            [*arm_still, -1.0],  # 2: still, gripper as kept 1 -> dropped
            [0.0, 0.0, 5e-5, 0.0, 0.0, 0.0, 1.0],  # 3: still but gripper changes -> kept
            [*arm_still, 1.0],  # 4: still, gripper as kept 3 -> dropped
            [*arm_still, -1.0],  # 5: gripper changes vs kept 3 -> kept
        ]
    )
    np.testing.assert_array_equal(noop_mask(actions), [True, False, True, False, True, False])
    spec = LIBERO.replace(image_keys={}, proprio_keys=(), proprio_dims=(), filter_noops=True)
    ep = standardize_episode({"actions": actions}, "x", spec, "mem", "0")
    assert ep["noops_removed"] == 3
    np.testing.assert_array_equal(ep["action"][:, 2], np.float32([0.5, 5e-5, 0.0]))
    np.testing.assert_array_equal(ep["action"][:, 6], [1.0, 0.0, 1.0])


# --------------------------------------------------------------------------- windows and chunks


def test_window_at_episode_start_repeats_the_first_frame_and_masks_it():
    sample = make_sample(_ramp_episode(5), t=1, window_size=3, action_horizon=2)
    frames = sample["observation"]["image_primary"][:, 0, 0, 0]
    np.testing.assert_array_equal(frames, [0, 0, 1])
    np.testing.assert_array_equal(sample["observation"]["timestep_pad_mask"], [False, True, True])
    np.testing.assert_array_equal(sample["observation"]["proprio"][:, 0], [0, 0, 1])
    # each window slot carries the chunk starting at its own (clamped) frame
    np.testing.assert_array_equal(sample["action"][:, :, 0], [[0, 2], [0, 2], [2, 4]])
    assert sample["action"].shape == (3, 2, 2)
    assert sample["action_pad_mask"].all()


def test_chunk_at_episode_end_repeats_the_last_action_and_masks_it():
    sample = make_sample(_ramp_episode(5), t=4, window_size=2, action_horizon=3)
    np.testing.assert_array_equal(sample["observation"]["timestep_pad_mask"], [True, True])
    np.testing.assert_array_equal(sample["action"][:, :, 0], [[6, 8, 8], [8, 8, 8]])
    expected_valid = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(
        sample["action_pad_mask"], np.repeat(expected_valid[:, :, None], 2, axis=2)
    )
    np.testing.assert_array_equal(sample["observation"]["task_completed"], ~expected_valid)


def test_one_step_episode_pads_both_ways():
    sample = make_sample(_ramp_episode(1), t=0, window_size=2, action_horizon=3)
    np.testing.assert_array_equal(sample["observation"]["timestep_pad_mask"], [False, True])
    np.testing.assert_array_equal(sample["action_pad_mask"][:, :, 0], [[True, False, False]] * 2)


def test_every_step_of_an_episode_becomes_one_sample_in_order():
    samples = list(episode_samples(_ramp_episode(4), window_size=1, action_horizon=1))
    assert [s["timestep"] for s in samples] == [0, 1, 2, 3]
    np.testing.assert_array_equal([s["action"][0, 0, 0] for s in samples], [0, 2, 4, 6])


def test_pad_action_dim_adds_masked_zero_dims():
    sample = make_sample(_ramp_episode(3, action_dim=2), t=0, window_size=1, action_horizon=2)
    padded = pad_action_dim(sample, 4)
    assert padded["action"].shape == (1, 2, 4)
    np.testing.assert_array_equal(padded["action"][0, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(padded["action_pad_mask"][0, 0], [True, True, False, False])
    with pytest.raises(DatasetError, match="3 action dims but the model takes 2"):
        pad_action_dim(make_sample(_ramp_episode(2, 3), 0, 1, 1), 2)


def test_batch_sampler_yields_fixed_size_seeded_batches_covering_each_epoch():
    episodes = [_ramp_episode(3), _ramp_episode(2)]
    sampler = BatchSampler(episodes, window_size=2, action_horizon=2, batch_size=4, seed=7)
    assert len(sampler) == 5
    first = [next(it) for it in [iter(sampler)] for _ in range(5)]
    again = [next(it) for it in [iter(BatchSampler(episodes, 2, 2, 4, seed=7))] for _ in range(5)]
    assert all(b["action"].shape == (4, 2, 2, 2) for b in first)
    assert first[0]["observation"]["image_primary"].shape == (4, 2, 2, 2, 3)
    assert first[0]["task"]["language_instruction"] == ["do it"] * 4
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["action"], b["action"])
    pairs = [
        (int(e), int(t))
        for b in first
        for e, t in zip(b["episode_index"], b["timestep"], strict=True)
    ]
    assert sorted(pairs[:5]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]  # one epoch, each once
    other = next(iter(BatchSampler(episodes, 2, 2, 4, seed=8)))
    assert not np.array_equal(other["timestep"], first[0]["timestep"]) or not np.array_equal(
        other["episode_index"], first[0]["episode_index"]
    )


def test_dataset_batches_normalize_and_pad_for_the_model(tmp_path):
    ds = open_dataset(write_tiny_libero_hdf5(tmp_path / "t_demo.hdf5", 3, 6), "libero")
    batch = next(
        ds.batches(
            window_size=2,
            action_horizon=4,
            batch_size=5,
            seed=0,
            normalization="normal",
            action_dim=10,
        )
    )
    assert batch["action"].shape == (5, 2, 4, 10) and batch["action_pad_mask"].shape == (
        5,
        2,
        4,
        10,
    )
    assert not batch["action_pad_mask"][..., 7:].any()
    raw = next(ds.batches(window_size=2, action_horizon=4, batch_size=5, seed=0))
    stats = ArrayStatistics.from_dict(ds.statistics()["action"], "action")
    np.testing.assert_allclose(
        batch["action"][..., :7], stats.normalize(raw["action"], "normal"), rtol=1e-6
    )
    np.testing.assert_array_equal(batch["action"][..., 6], raw["action"][..., 6])  # gripper masked


# --------------------------------------------------------------------------- statistics


def test_statistics_match_numpy_on_known_data(tmp_path):
    actions = np.array(
        [[0.0, 1.0, 1.0], [2.0, 3.0, 0.0], [4.0, 5.0, 1.0], [6.0, 7.0, 0.0]], np.float32
    )
    episodes = [
        _episode(actions[:3], proprio=actions[:3, :2]),
        _episode(actions[3:], proprio=actions[3:, :2]),
    ]
    stats = compute_statistics(episodes, LIBERO.replace(action_dim=3))
    assert stats["num_transitions"] == 4 and stats["num_trajectories"] == 2
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0))
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0))
    np.testing.assert_allclose(stats["action"]["min"], actions.min(0))
    np.testing.assert_allclose(stats["action"]["max"], actions.max(0))
    np.testing.assert_allclose(stats["action"]["p01"], np.quantile(actions, 0.01, axis=0))
    np.testing.assert_allclose(stats["action"]["p99"], np.quantile(actions, 0.99, axis=0))
    assert stats["action"]["mask"] == [True, True, False]
    np.testing.assert_allclose(stats["proprio"]["mean"], actions[:, :2].mean(0))
    assert stats["proprio"]["mask"] == [True, True]


def test_dataset_statistics_json_has_octo_single_dataset_layout(tmp_path):
    ds = open_dataset(write_tiny_rlds(tmp_path, 2, 5), "libero_rlds")
    path = ds.write_statistics(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "dataset_statistics.json"
    data = json.loads(path.read_text())
    assert set(data) == {"action", "proprio", "num_transitions", "num_trajectories"}
    assert set(data["action"]) == {"mean", "std", "min", "max", "p01", "p99", "mask"}
    assert (data["num_transitions"], data["num_trajectories"]) == (10, 2)
    assert len(data["proprio"]["mean"]) == 8
    normalized = normalize_batch({"action": np.asarray(data["action"]["mean"])[None]}, data)
    np.testing.assert_allclose(normalized["action"][0, :6], 0.0, atol=1e-6)


def test_standardize_episode_names_a_missing_source_key():
    with pytest.raises(
        DatasetError, match=r"no 'obs/agentview_rgb' \(spec 'libero'\); available: actions"
    ):
        standardize_episode({"actions": np.zeros((2, 7))}, "x", LIBERO, "mem", "0")
