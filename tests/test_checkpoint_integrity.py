"""Corrupted weights are refused at load, by every policy family, naming the file and the key.

Issue 10's boundary checks: a NaN weight, a weight of the wrong dtype (an integer, a string),
a truncated and a garbage weights file. Each test copies a shared fixture
(``../shared/fixtures/octo_tiny_lang``, ``robomimic_dp_tiny/model.pth``) into ``tmp_path``,
damages the copy and calls the family's load entry point: ``load_octo`` (octo_jax),
``load_octo_pt`` on the JAX checkpoint and on its own torch checkpoint, and the diffusion
``load_checkpoint``. Corruption is not a config mismatch, so ``strict=False`` refuses it too.
Float weights of another width are not corruption: they load, cast to float32, bit-identical.
"""

from __future__ import annotations

import re
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalharness.policies.common.compat import (
    CheckpointError,
    check_dtypes,
    flatten_tree,
    unflatten_tree,
)
from evalharness.policies.octo.checkpoint import msgpack_restore, msgpack_serialize

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
OCTO = FIXTURES / "octo_tiny_lang"
OCTO_WEIGHTS = Path("300000") / "default" / "checkpoint"
DIFFUSION = FIXTURES / "robomimic_dp_tiny" / "model.pth"

#: A diffusion-head kernel both Octo families load: Flax (124, 64) → torch Linear (64, 124).
KERNEL = "heads_action/diffusion_model/reverse_network/Dense_0/kernel"
TORCH_KERNEL = "heads.action.diffusion_model.input_proj.weight"
DP_KEY = "policy.noise_pred_net.mid_modules.0.blocks.0.block.0.weight"  # (64, 64, 5)

needs_octo = pytest.mark.skipif(not OCTO.is_dir(), reason="shared fixtures not present")
needs_diffusion = pytest.mark.skipif(not DIFFUSION.is_file(), reason="shared fixtures not present")


def _octo_loader(family: str) -> Callable[..., Any]:
    """The family's load entry point, or a skip when its framework is not installed."""
    if family == "octo_jax":
        pytest.importorskip("jax")
        pytest.importorskip("flax")
        from evalharness.policies.octo_jax.loader import load_octo

        return load_octo
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    return load_octo_pt


def _copy_octo(target: Path) -> Path:
    """The fixture's checkpoint files, writable (the shared fixture itself is read-only)."""
    for src in OCTO.rglob("*"):
        if src.is_file() and src.name not in ("reference.npz", "README.md", "param_tree.txt"):
            dst = target / src.relative_to(OCTO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return target


def _fixture_params() -> dict[str, np.ndarray]:
    return flatten_tree(msgpack_restore((OCTO / OCTO_WEIGHTS).read_bytes()))


def _octo_with(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the Octo fixture whose parameters went through `edit` (a flat dict)."""
    directory = _copy_octo(tmp_path / "octo")
    flat: dict[str, Any] = {k: np.array(v) for k, v in _fixture_params().items()}
    edit(flat)
    (directory / OCTO_WEIGHTS).write_bytes(msgpack_serialize(unflatten_tree(flat)))
    return directory


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(flat: dict[str, Any]) -> None:
        flat[key] = value(flat[key]) if callable(value) else value

    return edit


def _with_nan(array: Any) -> Any:
    out = array.clone() if hasattr(array, "clone") else np.array(array)
    out[(3, 5) + (0,) * (out.ndim - 2)] = float("nan")
    return out


# --------------------------------------------------------------------------------------------
# Octo checkpoints (upstream JAX layout), read by octo_jax and by octo_pt


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_nan_weight_is_refused_naming_the_file_and_tensor(family: str, tmp_path: Path) -> None:
    load = _octo_loader(family)
    directory = _octo_with(tmp_path, _set(KERNEL, _with_nan))
    message = (
        f"{directory / OCTO_WEIGHTS}: tensor '{KERNEL}' (124, 64) holds 1 NaN/inf value(s) "
        "(first nan at index (3, 5)); expected finite weights"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(directory, strict=False)


@needs_octo
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_integer_weight_is_refused_naming_found_and_expected_dtype(
    family: str, strict: bool, tmp_path: Path
) -> None:
    load = _octo_loader(family)
    directory = _octo_with(tmp_path, _set(KERNEL, lambda a: np.zeros(a.shape, np.int32)))
    model = f" (model tensor '{TORCH_KERNEL}')" if family == "octo_pt" else ""
    message = (
        f"{directory / OCTO_WEIGHTS}: tensor '{KERNEL}' (124, 64){model} has dtype int32; "
        "expected a floating-point dtype (the model's is float32)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(directory, strict=strict)


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_string_where_a_kernel_belongs_is_refused_naming_the_key(
    family: str, tmp_path: Path
) -> None:
    load = _octo_loader(family)
    directory = _octo_with(tmp_path, _set(KERNEL, "not a kernel"))
    model = f" (model tensor '{TORCH_KERNEL}')" if family == "octo_pt" else ""
    message = (
        f"{directory / OCTO_WEIGHTS}: tensor '{KERNEL}'{model} is a str, not an array; "
        "expected a floating-point dtype (the model's is float32)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(directory, strict=False)


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_float64_and_bfloat16_weights_load_cast_to_float32(
    family: str, tmp_path: Path
) -> None:
    load = _octo_loader(family)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    original = _fixture_params()

    def widen(flat: dict[str, Any]) -> None:
        for key, value in flat.items():
            flat[key] = value.astype(np.float64)
        flat[KERNEL] = original[KERNEL].astype(ml_dtypes.bfloat16)

    loaded = load(_octo_with(tmp_path, widen))
    assert loaded.report.compatible
    expected = dict(original)
    expected[KERNEL] = original[KERNEL].astype(ml_dtypes.bfloat16).astype(np.float32)
    assert not np.array_equal(expected[KERNEL], original[KERNEL])  # bfloat16 did round
    if family == "octo_jax":
        params = flatten_tree(loaded.params)
        assert sorted(params) == sorted(expected)
        for key, value in params.items():
            assert value.dtype == np.float32 and np.array_equal(value, expected[key]), key
    else:
        from evalharness.policies.octo_pt.checkpoint import _encoder_names
        from evalharness.policies.octo_pt.jax_weights import jax_key_map, to_torch_layout

        state = loaded.model.state_dict()
        mapping = jax_key_map(loaded.model, _encoder_names(loaded.config))
        for key, leaf in mapping.items():
            want = to_torch_layout(expected[leaf.jax_key], leaf)
            got = state[key]
            assert str(got.dtype) == "torch.float32" and np.array_equal(got.numpy(), want), key


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_truncated_weights_file_names_the_file_and_the_tensor_it_cuts(
    family: str, tmp_path: Path
) -> None:
    load = _octo_loader(family)
    directory = _copy_octo(tmp_path / "octo")
    weights = directory / OCTO_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as caught:
        load(directory, strict=False)
    message = str(caught.value)
    assert message.startswith(f"{weights}: not a readable flax msgpack file")
    cut = re.search(r"reading stopped in '([^']+)' at byte (\d+) of (\d+)", message)
    assert cut is not None, message
    assert cut.group(1) in _fixture_params()  # a real tensor, the one the cut falls in
    assert int(cut.group(3)) == len(data) // 2 and "truncated or corrupted" in message


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_garbage_weights_file_is_named(family: str, tmp_path: Path) -> None:
    load = _octo_loader(family)
    directory = _copy_octo(tmp_path / "octo")
    weights = directory / OCTO_WEIGHTS
    weights.write_bytes(b"\xc1" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(weights))}: not a readable flax"):
        load(directory)


@needs_octo
@pytest.mark.parametrize("family", ["octo_jax", "octo_pt"])
def test_octo_array_whose_bytes_disagree_with_its_shape_is_named(
    family: str, tmp_path: Path
) -> None:
    load = _octo_loader(family)
    import msgpack

    directory = _copy_octo(tmp_path / "octo")
    weights = directory / OCTO_WEIGHTS
    kernel = np.ascontiguousarray(_fixture_params()[KERNEL])
    whole = msgpack.packb(((124, 64), "float32", kernel.tobytes()), use_bin_type=True)
    short = msgpack.packb(((124, 64), "float32", kernel.tobytes()[:100]), use_bin_type=True)
    data = weights.read_bytes()
    assert data.count(whole) == 1
    # The ext header carries the payload length, so the file stays well-formed msgpack.
    weights.write_bytes(
        data.replace(
            msgpack.packb(msgpack.ExtType(1, whole)), msgpack.packb(msgpack.ExtType(1, short))
        )
    )
    message = (
        f"{directory / OCTO_WEIGHTS}: array '{KERNEL}' (124, 64) float32 should hold 31744 "
        "bytes but holds 100; the file is corrupted"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(directory)


# --------------------------------------------------------------------------------------------
# octo_pt's own torch checkpoint (model.safetensors)


@pytest.fixture(scope="module")
def torch_octo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The Octo fixture loaded in torch and saved in octo_pt's layout, with its state dict."""
    if not OCTO.is_dir():
        pytest.skip("shared fixtures not present")
    load = _octo_loader("octo_pt")
    from evalharness.policies.octo_pt.checkpoint import save_torch_checkpoint

    loaded = load(OCTO)
    directory = save_torch_checkpoint(
        tmp_path_factory.mktemp("octo_pt") / "ckpt",
        loaded.model,
        loaded.raw_config,
        loaded.example_batch,
        loaded.dataset_statistics,
        t5_config=loaded.extra["t5"],
    )
    return directory, {k: v.clone() for k, v in loaded.model.state_dict().items()}


def _torch_octo_with(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> Path:
    from safetensors.torch import load_file, save_file

    directory = Path(shutil.copytree(torch_octo[0], tmp_path / "ckpt"))
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_octo_pt_torch_checkpoint_nan_weight_is_refused_naming_the_file_and_tensor(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    directory = _torch_octo_with(torch_octo, tmp_path, _set(TORCH_KERNEL, _with_nan))
    message = (
        f"{directory / 'model.safetensors'}: tensor '{TORCH_KERNEL}' (64, 124) holds 1 NaN/inf "
        "value(s) (first nan at index (3, 5)); expected finite weights"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_octo_pt(directory, strict=False)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_octo_pt_torch_checkpoint_non_float_weight_is_refused_naming_found_and_expected_dtype(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path, dtype: str, strict: bool
) -> None:
    import torch

    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    as_dtype = getattr(torch, dtype)
    directory = _torch_octo_with(torch_octo, tmp_path, _set(TORCH_KERNEL, lambda t: t.to(as_dtype)))
    message = (
        f"{directory / 'model.safetensors'}: tensor '{TORCH_KERNEL}' (64, 124) has dtype "
        f"{dtype}; expected a floating-point dtype (the model's is float32)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_octo_pt(directory, strict=strict)


def test_octo_pt_torch_checkpoint_float64_and_bfloat16_weights_load_cast_to_float32(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import torch

    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    def widen(tensors: dict[str, Any]) -> None:
        for key, value in tensors.items():
            if value.is_floating_point():
                tensors[key] = value.double()
        tensors[TORCH_KERNEL] = tensors[TORCH_KERNEL].bfloat16()

    loaded = load_octo_pt(_torch_octo_with(torch_octo, tmp_path, widen))
    assert loaded.report.compatible
    original = torch_octo[1]
    state = loaded.model.state_dict()
    assert sorted(state) == sorted(original)
    for key, value in state.items():
        want = original[key].bfloat16().float() if key == TORCH_KERNEL else original[key]
        assert value.dtype == original[key].dtype and torch.equal(value, want), key
    assert not torch.equal(state[TORCH_KERNEL], original[TORCH_KERNEL])  # bfloat16 did round


def test_octo_pt_torch_checkpoint_truncated_file_names_the_tensor_it_cuts(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    directory = Path(shutil.copytree(torch_octo[0], tmp_path / "ckpt"))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as caught:
        load_octo_pt(directory, strict=False)
    message = str(caught.value)
    assert message.startswith(f"{weights}: not a readable safetensors file (SafetensorError")
    cut = re.search(r"tensor '([^']+)' \([\d, ]*\) F32 needs data bytes \[\d+, \d+\)", message)
    assert cut is not None and cut.group(1) in torch_octo[1], message
    assert "truncated or corrupted" in message


def test_octo_pt_torch_checkpoint_garbage_file_is_named(
    torch_octo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    directory = Path(shutil.copytree(torch_octo[0], tmp_path / "ckpt"))
    weights = directory / "model.safetensors"
    weights.write_bytes(b"\xc1\xff not safetensors " * 50)
    message = f"{weights}: not a readable safetensors file (SafetensorError"
    with pytest.raises(CheckpointError, match=re.escape(message) + r".*header claims \d+ bytes"):
        load_octo_pt(directory)


# --------------------------------------------------------------------------------------------
# robomimic diffusion policy (.pth)


@pytest.fixture(scope="module")
def dp_checkpoint() -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    if not DIFFUSION.is_file():
        pytest.skip("shared fixtures not present")
    return dict(torch.load(DIFFUSION, map_location="cpu", weights_only=True))


def _dp_with(
    dp_checkpoint: dict[str, Any], tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> Path:
    """A copy of the fixture whose EMA weights (the ones inference loads) went through `edit`."""
    import torch

    ema = OrderedDict(dp_checkpoint["model"]["ema"])
    edit(ema)
    ckpt = dict(dp_checkpoint, model=dict(dp_checkpoint["model"], ema=ema))
    path = tmp_path / "model.pth"
    torch.save(ckpt, path)
    return path


def test_diffusion_nan_weight_is_refused_naming_the_file_and_tensor(
    dp_checkpoint: dict[str, Any], tmp_path: Path
) -> None:
    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    path = _dp_with(dp_checkpoint, tmp_path, _set(DP_KEY, _with_nan))
    message = (
        f"{path} [ema]: tensor '{DP_KEY}' (64, 64, 5) holds 1 NaN/inf value(s) "
        "(first nan at index (3, 5, 0)); expected finite weights"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path, strict=False)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("dtype", ["int64", "complex64"])
def test_diffusion_non_float_weight_is_refused_naming_found_and_expected_dtype(
    dp_checkpoint: dict[str, Any], tmp_path: Path, dtype: str, strict: bool
) -> None:
    import torch

    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    as_dtype = getattr(torch, dtype)
    path = _dp_with(dp_checkpoint, tmp_path, _set(DP_KEY, lambda t: t.to(as_dtype)))
    message = (
        f"{path} [ema]: tensor '{DP_KEY}' (64, 64, 5) has dtype {dtype}; expected a "
        "floating-point dtype (the model's is float32)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path, strict=strict)


def test_diffusion_string_where_a_weight_belongs_is_refused_naming_the_key(
    dp_checkpoint: dict[str, Any], tmp_path: Path
) -> None:
    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    path = _dp_with(dp_checkpoint, tmp_path, _set(DP_KEY, "not a weight"))
    message = (
        f"{path} [ema]: state dict entry '{DP_KEY}' is a str, not a tensor; expected a float tensor"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path, strict=False)


def test_diffusion_float64_weights_load_cast_to_float32_bit_identical(
    dp_checkpoint: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    def widen(state: dict[str, Any]) -> None:
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = value.double()

    loaded = load_checkpoint(_dp_with(dp_checkpoint, tmp_path, widen))
    assert loaded.report.compatible and loaded.weights == "ema"
    state, ema = loaded.nets.state_dict(), dp_checkpoint["model"]["ema"]
    for entry in loaded.report.loaded:
        assert entry.source_key is not None
        value = state[entry.key]
        assert value.dtype == torch.float32, entry.key
        assert torch.equal(value, ema[entry.source_key]), entry.key


def test_diffusion_truncated_file_is_named_and_not_blamed_on_pickling(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if not DIFFUSION.is_file():
        pytest.skip("shared fixtures not present")
    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    path = tmp_path / "model.pth"
    data = DIFFUSION.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = (
        f"{path}: not a readable torch checkpoint (RuntimeError: PytorchStreamReader failed "
        "reading zip archive: failed finding central directory"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        load_checkpoint(path, strict=False)
    assert f"truncated or corrupted ({len(data) // 2} bytes)" in str(caught.value)
    assert "trust" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xc1\xff not a torch file" * 10, "Unsupported operand 193"),
        (b"", "EOFError"),
    ],
    ids=["garbage", "empty"],
)
def test_diffusion_garbage_file_is_named_and_never_suggests_trusting_it(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    pytest.importorskip("torch")
    from evalharness.policies.diffusion.checkpoint import load_checkpoint

    path = tmp_path / "model.pth"
    path.write_bytes(content)
    message = f"{path}: not a readable torch checkpoint ({reason}"
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        load_checkpoint(path)
    assert "trust" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# the shared check


def test_integer_buffers_of_another_width_load_and_a_float_in_their_place_is_refused() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.BatchNorm1d(4).state_dict()  # num_batches_tracked is an int64 buffer
    stored = dict(model, num_batches_tracked=torch.tensor(7, dtype=torch.int32))
    check_dtypes(stored, model, "bn.pth")
    stored["num_batches_tracked"] = torch.tensor(7.0)
    message = (
        "bn.pth: tensor 'num_batches_tracked' () has dtype float32; expected an integer dtype "
        "(the model's is int64)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        check_dtypes(stored, model, "bn.pth")
