"""Pinned hub references (``hf://org/name@REV/path``) resolve through a local Hugging Face cache
offline, land in run.json and the run identity, and a moved revision makes --resume refuse.

The cache is laid out by hand the way ``huggingface_hub`` writes it (``models--org--name/``
with ``refs/<revision>`` holding a commit, ``snapshots/<commit>/`` of symlinks into
``blobs/``), and read with ``HF_HUB_OFFLINE=1``: no test touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalharness.identity import checkpoint_identity
from evalharness.policies.common import hub
from evalharness.policies.common.hub import HubError, HubRef, parse_hub_ref

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
DP_TINY = FIXTURES / "robomimic_dp_tiny" / "model.pth"


def add_commit(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes | Path],
    refs: tuple[str, ...] = ("main",),
    repo_type: str = "model",
) -> str:
    """Write one commit of ``repo_id`` into a huggingface_hub cache; returns its sha."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    contents = {name: f.read_bytes() if isinstance(f, Path) else f for name, f in files.items()}
    listing = b"".join(
        name.encode() + hashlib.sha256(data).digest() for name, data in contents.items()
    )
    commit = hashlib.sha1(repo_id.encode() + listing).hexdigest()
    for name, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return commit


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_references_parse_like_hffilesystem_paths() -> None:
    assert parse_hub_ref("hf://rail-berkeley/octo-small-1.5") == HubRef(
        "rail-berkeley/octo-small-1.5"
    )
    assert parse_hub_ref("hf://org/dp@v1.0/ckpts/model.pth") == HubRef(
        "org/dp", "model", "v1.0", "ckpts/model.pth"
    )
    assert parse_hub_ref("hf://datasets/org/demos@refs%2Fpr%2F3") == HubRef(
        "org/demos", "dataset", "refs/pr/3", ""
    )
    assert parse_hub_ref("hf://org/demos", default_repo_type="dataset").repo_type == "dataset"
    assert str(parse_hub_ref("hf://datasets/org/demos@refs%2Fpr%2F3/a.hdf5")) == (
        "hf://datasets/org/demos@refs%2Fpr%2F3/a.hdf5"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hf://octo-small", "names no repository; expected hf://ORG/NAME"),
        ("hf://org/name@", "nothing after '@'"),
        ("hf://org/na me", "repository name 'na me' must be letters"),
        ("hf://org/name/../secrets", "path inside the repository is malformed"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(HubError, match=message):
        parse_hub_ref(text)


def test_a_branch_a_tag_and_a_commit_resolve_offline_from_the_cache(offline_cache: Path) -> None:
    first = add_commit(offline_cache, "org/octo", {"config.json": b"{}"}, refs=("main", "v1"))
    second = add_commit(offline_cache, "org/octo", {"config.json": b'{"a": 1}'}, refs=("main",))
    main = hub.resolve("hf://org/octo")
    assert main.commit == second
    assert main.snapshot == offline_cache / "models--org--octo" / "snapshots" / second
    assert (main.local_path / "config.json").read_text() == '{"a": 1}'
    assert main.to_dict() == {
        "repo": "org/octo",
        "repo_type": "model",
        "revision": "main",
        "commit": second,
        "path": "",
    }
    assert hub.resolve("hf://org/octo@v1").commit == first
    pinned = hub.resolve(f"hf://org/octo@{first}")
    assert pinned.commit == first and pinned.pinned == f"hf://org/octo@{first}"


def test_a_path_inside_the_repository_resolves_to_that_file(offline_cache: Path) -> None:
    commit = add_commit(offline_cache, "org/dp", {"ckpt/model.pth": b"w", "spec.json": b"{}"})
    resolved = hub.resolve("hf://org/dp@main/ckpt/model.pth")
    assert resolved.local_path.read_bytes() == b"w"
    assert hub.local_path("hf://org/dp/ckpt/model.pth") == str(resolved.local_path)
    assert hub.local_path("/a/local/path") == "/a/local/path"
    with pytest.raises(HubError, match=f"commit {commit} of 'org/dp' has no 'ckpt/other.pth'"):
        hub.resolve("hf://org/dp/ckpt/other.pth")


def test_what_the_cache_lacks_is_an_error_naming_the_cache_and_what_to_do(
    offline_cache: Path,
) -> None:
    add_commit(offline_cache, "org/octo", {"config.json": b"{}"})
    with pytest.raises(HubError) as info:
        hub.resolve("hf://org/octo@v2")
    message = str(info.value)
    assert (
        "model repository 'org/octo' at revision 'v2' is not in the local Hugging Face cache"
        in (message)
    )
    assert f"Cache searched: {offline_cache}" in message and "unset HF_HUB_OFFLINE" in message
    with pytest.raises(HubError, match="repository 'org/missing' at revision 'main'"):
        hub.resolve("hf://org/missing")


def test_the_identity_records_the_commit_and_changes_when_the_branch_moves(
    offline_cache: Path,
) -> None:
    first = add_commit(offline_cache, "org/dp", {"model.pth": b"weights v1"})
    hub.resolve("hf://org/dp/model.pth")  # what loading the policy does
    before = checkpoint_identity("hf://org/dp/model.pth")
    assert before == {
        "checkpoint_sha256": hashlib.sha256(b"model.pth\0weights v1\0").hexdigest(),
        "checkpoint_hub": {
            "repo": "org/dp",
            "repo_type": "model",
            "revision": "main",
            "commit": first,
            "path": "model.pth",
        },
    }
    second = add_commit(offline_cache, "org/dp", {"model.pth": b"weights v2"})
    # The identity keeps the commit the policy was loaded from until it is loaded again.
    assert checkpoint_identity("hf://org/dp/model.pth") == before
    hub.resolve("hf://org/dp/model.pth")
    after = checkpoint_identity("hf://org/dp/model.pth")
    assert after["checkpoint_hub"]["commit"] == second
    assert after["checkpoint_sha256"] != before["checkpoint_sha256"]
    assert checkpoint_identity("/no/such/ckpt") == {"checkpoint_sha256": None}


def test_a_finetuned_checkpoint_on_the_hub_keeps_its_training_orientation(
    offline_cache: Path,
) -> None:
    from evalharness.policies.registry import training_orientation

    spec = json.dumps({"evaluation_orientation": "raw"}).encode()
    add_commit(offline_cache, "org/ft", {"model.pth": b"w", "dataset_spec.json": spec})
    hub.resolve("hf://org/ft/model.pth")  # what loading the policy does
    assert training_orientation("hf://org/ft/model.pth") == "raw"


def test_octo_checkpoints_load_from_the_cache(offline_cache: Path) -> None:
    fixture = FIXTURES / "octo_tiny_lang"
    if not fixture.is_dir():
        pytest.skip("needs ../shared/fixtures/octo_tiny_lang")
    from evalharness.policies.octo.checkpoint import load_checkpoint

    files: dict[str, bytes | Path] = {
        p.relative_to(fixture).as_posix(): p
        for p in fixture.rglob("*")
        if p.is_file() and p.suffix not in (".npz", ".txt", ".md")
    }
    commit = add_commit(offline_cache, "org/octo-tiny", files)
    checkpoint = load_checkpoint(f"hf://org/octo-tiny@{commit}")
    assert checkpoint.directory == offline_cache / "models--org--octo-tiny" / "snapshots" / commit
    assert checkpoint.step == 300000
    assert checkpoint.config["model"] == json.loads((fixture / "config.json").read_text())["model"]


def test_finetune_data_resolves_from_a_dataset_repository(offline_cache: Path, tmp_path) -> None:
    from evalharness.data import DatasetError, open_dataset, write_tiny_libero_hdf5

    demo = write_tiny_libero_hdf5(tmp_path / "pick_demo.hdf5", num_demos=2, steps=4, seed=1)
    commit = add_commit(offline_cache, "org/demos", {"pick_demo.hdf5": demo}, repo_type="dataset")
    dataset = open_dataset("hf://datasets/org/demos@main", "libero")
    assert dataset.path == offline_cache / "datasets--org--demos" / "snapshots" / commit
    assert len(list(dataset.episodes())) == 2
    # Where a dataset is expected, a reference without datasets/ names a dataset repository.
    assert open_dataset("hf://org/demos", "libero").path == dataset.path
    with pytest.raises(DatasetError, match="dataset repository 'org/nothing'"):
        open_dataset("hf://datasets/org/nothing", "libero")


@pytest.mark.skipif(not DP_TINY.is_file(), reason="needs ../shared/fixtures/robomimic_dp_tiny")
@pytest.mark.sim
@pytest.mark.slow
def test_run_records_the_commit_and_resume_refuses_a_moved_branch(tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    first = add_commit(cache, "org/dp-tiny", {"model.pth": DP_TINY})
    env = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evalharness", "run", "--suite", "libero_spatial",
           "--policy", "diffusion:hf://org/dp-tiny@main/model.pth", "--tasks", "0",
           "--episodes-per-task", "1", "--max-steps", "3", "--num-envs", "1",
           "--camera-size", "84", "--no-progress", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["checkpoint_hub"] == {
        "repo": "org/dp-tiny",
        "repo_type": "model",
        "revision": "main",
        "commit": first,
        "path": "model.pth",
    }
    assert run["identity"]["checkpoint_sha256"] is not None

    # Upstream pushes a new commit to main (here: the same weights, so only the commit moves).
    second = add_commit(cache, "org/dp-tiny", {"model.pth": DP_TINY, "README.md": b"v2"})
    refused = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "--resume into" in refused.stderr and "checkpoint_hub.commit" in refused.stderr
    assert f"recorded '{first}', now '{second}'" in refused.stderr
