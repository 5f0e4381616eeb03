"""FaceAnalyser on real portraits: minimum event size, cooldowns per track and per person, one embedding a frame."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
pytest.importorskip("cryptography")

from models.config import VisionConfig  # noqa: E402
from models.face_analyser import FaceAnalyser  # noqa: E402
from models.faces import FacePipeline, enrolment_embedding  # noqa: E402
from models.gallery import Gallery, Person, load_key  # noqa: E402

NON_FACES = ("coins.png", "coffee.png", "chelsea.png", "rocket.jpg", "brick.png", "gravel.png")


@pytest.fixture(scope="module")
def pipeline(vision_dir: Path) -> FacePipeline:
    return FacePipeline.from_data_dir(vision_dir)


@pytest.fixture(scope="module")
def portraits(vision_dir: Path, pipeline: FacePipeline) -> dict[str, tuple[np.ndarray, float]]:
    """Each portrait with the size of its face (px), to paste it at a chosen face size."""
    out = {}
    for name, f in {"collins": "astronaut.png", "hopper": "grace_hopper.jpg"}.items():
        img = cv2.imread(str(vision_dir / "testdata" / f))
        out[name] = (img, pipeline.faces(img)[0].size)
    return out


def scene(portraits: dict[str, tuple[np.ndarray, float]], placed: list[tuple[str, int, int, float]]) -> np.ndarray:
    """A 640x480 frame with each (person, x, y, face px) pasted in."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    for name, x, y, face_px in placed:
        img, size = portraits[name]
        small = cv2.resize(img, None, fx=face_px / size, fy=face_px / size, interpolation=cv2.INTER_AREA)
        h, w = min(small.shape[0], 480 - y), min(small.shape[1], 640 - x)
        frame[y:y + h, x:x + w] = small[:h, :w]
    return frame


def analyser(tmp_path: Path, vision_dir: Path, **faces: object) -> FaceAnalyser:
    (tmp_path / "models").symlink_to(vision_dir / "models")
    key = tmp_path / "faces.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return FaceAnalyser("door", VisionConfig.model_validate({"faces": {"key_file": str(key), **faces}}), tmp_path)


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind for e in events]


def step(a: FaceAnalyser, frame: np.ndarray, t: float) -> list[str]:
    """Two frames 0.1 s apart: with split_frames the first detects and the second embeds."""
    return kinds(a.analyse(frame, t)) + kinds(a.analyse(frame, t + 0.1))


def test_tiny_faces_and_non_faces_raise_nothing(tmp_path: Path, vision_dir: Path, portraits: dict) -> None:
    a = analyser(tmp_path, vision_dir)
    assert a.min_px == 32
    badge = scene(portraits, [("hopper", 300, 200, 20)])  # a photo on a badge, a face 20 px tall
    for k in range(5):
        assert a.analyse(badge, k / 5) == []
    assert [label for _, _, label in a.found] == ["small"] and a.embedded == 0  # seen, never embedded
    for name in NON_FACES:  # real photos without a person, at two camera-ish scales
        img = cv2.imread(str(vision_dir / "testdata" / name))
        for size in ((640, 480), (320, 240)):
            frame = np.full((480, 640, 3), 90, np.uint8)
            frame[:size[1], :size[0]] = cv2.resize(img, size)
            assert a.analyse(frame, 10.0) == [], name
    near = scene(portraits, [("hopper", 300, 200, 48)])  # the same face, closer: a visitor
    assert kinds(a.analyse(near, 20.0)) == [] and a.busy  # split_frames: this frame detects, the next embeds
    assert kinds(a.analyse(near, 20.2)) == ["face.unknown"] and not a.busy


@pytest.mark.parametrize("split", [True, False])
def test_each_unknown_face_has_its_own_cooldown(tmp_path: Path, vision_dir: Path, portraits: dict,
                                                split: bool) -> None:
    a = analyser(tmp_path, vision_dir, cooldown="5s", split_frames=split)
    two = scene(portraits, [("collins", 40, 100, 80), ("hopper", 400, 100, 100)])
    timeline = [(k * 0.5, kinds(a.analyse(two, k * 0.5))) for k in range(17)]  # 0 .. 8 s
    # two strangers: two face.unknown, on two frames (one embedding a frame: the larger face first)
    first = [(t, v) for t, v in timeline if t < 2.0 and v]
    assert [v for _, v in first] == [["face.unknown"], ["face.unknown"]], timeline
    assert first[0][0] == (0.5 if split else 0.0)
    assert not any(v for t, v in timeline if 2.0 <= t < 5.0)  # each track's cooldown holds
    assert sum(len(v) for t, v in timeline if t >= 5.0) == 2  # and ends for each after 5 s
    assert len(a.tracks) == 2


@pytest.mark.parametrize("split", [True, False])
def test_a_known_person_has_a_cooldown_whatever_track_they_are_on(tmp_path: Path, vision_dir: Path,
                                                                   portraits: dict, pipeline: FacePipeline,
                                                                   split: bool) -> None:
    a = analyser(tmp_path, vision_dir, cooldown="10s", split_frames=split)
    key = load_key(Path(tmp_path / "faces.key"))
    with Gallery(tmp_path, key) as g:
        g.enroll(Person("r-0101", "Eileen", "resident", "2026-01-01"),
                 [enrolment_embedding(pipeline, portraits["collins"][0])])
    here = scene(portraits, [("collins", 40, 100, 90)])
    there = scene(portraits, [("collins", 420, 150, 90), ("hopper", 40, 100, 90)])
    assert step(a, here, 0.0) == ["face.recognized"]
    assert [label for _, _, label in a.found] == ["r-0101"]
    # she walks to the other side (a new track) while a stranger comes in: only the stranger is news
    assert step(a, there, 0.2) + step(a, there, 0.4) == ["face.unknown"]
    assert sorted(label for _, _, label in a.found) == ["r-0101", "unknown"]
    empty = scene(portraits, [])
    for k in range(5):
        a.analyse(empty, 1.0 + k)  # both gone: their tracks end
    assert a.tracks == []
    assert step(a, here, 8.0) == []  # back within her cooldown: the same visit
    assert step(a, here, 10.5) == ["face.recognized"]  # after it, a new one


def test_a_clock_that_goes_back_starts_tracks_and_cooldowns_over(tmp_path: Path, vision_dir: Path,
                                                                  portraits: dict) -> None:
    a = analyser(tmp_path, vision_dir, cooldown="1h")
    face = scene(portraits, [("hopper", 300, 100, 80)])
    assert step(a, face, 5000.0) == ["face.unknown"]
    assert step(a, face, 5000.4) == []  # the same track, within its cooldown
    assert step(a, face, 1000.0) == ["face.unknown"]  # NTP stepped the clock back over an hour


def test_with_split_frames_the_snapshot_is_the_frame_the_face_was_seen_on(tmp_path: Path, vision_dir: Path,
                                                                            portraits: dict) -> None:
    """Frame N detects the face, frame N+1 embeds it and raises the event: the snapshot is frame N (on N+1 the
    person may have gone), through the camera worker's loop and real snapshot files."""
    import io

    from models.config import CameraConfig, SnapshotConfig
    from models.snapshots import Snapshots
    from models.worker import CameraLoop, Out

    a = analyser(tmp_path, vision_dir, split_frames=True)
    camera = CameraConfig.model_validate({"id": "door", "url": "usb:0", "snapshots": {"enabled": True}})
    shots = tmp_path / "snapshots" / "door"
    loop = CameraLoop(camera, [a], Out(io.StringIO(), "door"), Snapshots(shots, SnapshotConfig(enabled=True)))
    seen = scene(portraits, [("collins", 200, 100, 80)])
    gone = np.full((480, 640, 3), 200, np.uint8)  # the next frame: the person has left
    loop.analyse(seen, 100.0)
    assert a.busy and not (shots.exists() and list(shots.glob("*.jpg")))
    loop.analyse(gone, 100.2)
    (shot,) = shots.glob("*-face.unknown.jpg")
    saved = cv2.imread(str(shot)).astype(np.float32)
    assert np.abs(saved - seen).mean() < 5 < np.abs(saved - gone).mean()
    assert a.analyse(gone, 100.4) == [] and a.seen_frame is None  # no event: nothing to save
