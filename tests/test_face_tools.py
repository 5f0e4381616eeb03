"""Enrolment that explains itself, and `gateway vision identify`, on real images."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
pytest.importorskip("cryptography")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from models.faces import ENROL_MIN_FACE, FacePipeline, assess_enrolment  # noqa: E402
from models.gallery import Gallery, Person, create_key, load_key  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(vision_dir: Path) -> FacePipeline:
    return FacePipeline.from_data_dir(vision_dir)


@pytest.fixture(scope="module")
def images(vision_dir: Path) -> dict[str, np.ndarray]:
    return {name: cv2.imread(str(vision_dir / "testdata" / f)) for name, f in
            {"collins": "astronaut.png", "hopper": "grace_hopper.jpg", "cameraman": "camera.png",
             "coffee": "coffee.png"}.items()}


def codes(verdict: object) -> dict[str, tuple[float, bool]]:
    return {c.code: (c.figure, c.fatal) for c in verdict.checks}  # type: ignore[attr-defined]


def test_each_borderline_or_bad_image_says_why_with_its_figure(pipeline: FacePipeline,
                                                               images: dict[str, np.ndarray]) -> None:
    hopper = images["hopper"]
    good = assess_enrolment(pipeline, hopper)
    assert good.accepted and good.checks == () and good.embedding is not None
    face = min(good.box[2:])  # type: ignore[index]

    def scaled(px: float) -> np.ndarray:
        return cv2.resize(hopper, None, fx=px / face, fy=px / face, interpolation=cv2.INTER_AREA)

    small = assess_enrolment(pipeline, scaled(36))
    assert not small.accepted and small.checks[0].code == "small" and small.checks[0].limit == ENROL_MIN_FACE
    assert 30 < small.checks[0].figure < 42 and "closer" in small.checks[0].advice
    near = assess_enrolment(pipeline, scaled(56))  # just over the limit: taken, and said to be borderline
    assert near.accepted and codes(near)["small"][1] is False and "borderline" in near.checks[0].message
    blurred = assess_enrolment(pipeline, cv2.GaussianBlur(images["collins"], (0, 0), 3))
    assert not blurred.accepted and codes(blurred)["blurry"][0] < 60
    dark = assess_enrolment(pipeline, cv2.convertScaleAbs(hopper, alpha=0.25))
    assert not dark.accepted and codes(dark)["dark"][0] < 45 and "light" in dark.checks[-1].advice
    bright = assess_enrolment(pipeline, cv2.convertScaleAbs(hopper, alpha=1.0, beta=150))
    assert not bright.accepted and codes(bright)["bright"][0] > 210
    profile = assess_enrolment(pipeline, images["cameraman"])  # looking sideways at his camera
    assert not profile.accepted and codes(profile)["turned"][0] > 0.5 and "straight" in profile.reason
    nobody = assess_enrolment(pipeline, images["coffee"])
    assert not nobody.accepted and [c.code for c in nobody.checks] in (["no_face"], ["score"])
    pair = np.hstack([hopper, cv2.resize(images["collins"], (hopper.shape[1], hopper.shape[0]))])
    two = assess_enrolment(pipeline, pair)
    assert not two.accepted and codes(two)["faces"][0] == 2 and "crop" in two.reason
    assert json.loads(json.dumps(two.as_dict()))["checks"][0]["code"] == "faces"


@pytest.fixture
def cli(tmp_path: Path, vision_dir: Path, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    from gateway.cli import vision, vision_tools

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    vision.add_commands(sub)
    vision_tools.add_commands(sub)
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    for f in (vision_dir / "models").glob("face_*.onnx"):
        (data / "models" / f.name).symlink_to(f)

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        code = args.fn(args)
        return code, capsys.readouterr().out

    return run, data


def test_enroll_prints_every_image_with_its_figures(cli, tmp_path: Path, images: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    run, data = cli
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    paths = {}
    for name, img in {"good": images["collins"], "profile": images["cameraman"],
                      "dim": cv2.convertScaleAbs(images["collins"], alpha=0.25)}.items():
        paths[name] = tmp_path / f"{name}.png"
        cv2.imwrite(str(paths[name]), img)
    code, out = run("faces", "enroll", "p1", "--image", *map(str, paths.values()), "--consent", "2025-03-01",
                    "--data-dir", str(data), "--key-file", str(keyf))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"accepted {paths['good']}"
    assert f"rejected {paths['profile']}" in lines and "face turned away (yaw" in out and "look straight" in out
    assert f"rejected {paths['dim']}" in lines and "face too dark (mean grey" in out
    assert lines[-1] == "p1: 1 of 3 images enrolled (1 in the gallery)"


def test_identify_reports_every_face_and_bad_files(cli, tmp_path: Path, images: dict[str, np.ndarray],  # type: ignore[no-untyped-def]
                                                   pipeline: FacePipeline) -> None:
    run, data = cli
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    with Gallery(data, load_key(keyf)) as g:
        g.enroll(Person("p-collins", "Eileen Collins", "resident", "2025-01-01"),
                 [pipeline.faces(images["collins"])[0].embedding])
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:256, :256] = cv2.resize(images["collins"], (256, 256))  # her face ~45 px: an event
    badge = cv2.resize(images["hopper"], None, fx=20 / 175, fy=20 / 175, interpolation=cv2.INTER_AREA)
    frame[300:300 + badge.shape[0], 400:400 + badge.shape[1]] = badge  # a 20 px face on a badge: none
    scene, junk, missing = tmp_path / "scene.jpg", tmp_path / "junk.jpg", tmp_path / "nope.jpg"
    cv2.imwrite(str(scene), frame)
    junk.write_bytes(b"\xff\xd8\xff not really")
    code, out = run("vision", "identify", str(scene), str(junk), str(missing), "--data-dir", str(data),
                    "--key-file", str(keyf), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["min_event_px"] == 32
    first, bad, gone = doc["images"]
    faces = sorted(first["faces"], key=lambda f: -f["size_px"])
    assert len(faces) == 2 and (first["width"], first["height"]) == (640, 480)
    assert faces[0]["person"] == "p-collins" and faces[0]["name"] == "Eileen Collins"
    assert faces[0]["similarity"] >= faces[0]["threshold"] and faces[0]["event"] == "face.recognized"
    assert faces[1]["person"] is None and faces[1]["event"] is None and faces[1]["size_px"] < 32
    assert "min_event_px" in faces[1]["no_event_because"]
    assert "decode" in bad["error"] and "cannot read" in gone["error"]
    code, out = run("vision", "identify", str(scene), str(missing), "--data-dir", str(data),
                    "--key-file", str(keyf))
    assert code == 1 and "Traceback" not in out
    assert "p-collins (Eileen Collins)" in out and "-> face.recognized" in out and "no event: face" in out
    assert f"{missing}: error: cannot read" in out
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    code, _ = run("vision", "identify", str(scene), "--data-dir", str(data))  # no key anywhere: said, exit 1
    assert code == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2000),
                      st.builds(lambda tail: b"\x89PNG\r\n\x1a\n" + tail, st.binary(max_size=500)),
                      st.builds(lambda tail: b"\xff\xd8\xff\xe0" + tail, st.binary(max_size=500))))
def test_identify_never_raises_on_hostile_files(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline,
                                                data: bytes) -> None:
    from gateway.cli.vision_identify import identify
    from models.config import FacesConfig

    work = tmp_path_factory.mktemp("hostile")
    path = work / "x.jpg"
    path.write_bytes(data)
    with Gallery(work, os.urandom(32)) as g:
        row = identify(pipeline, g, {}, FacesConfig(), path)
    assert row["image"] == str(path) and ("error" in row or isinstance(row["faces"], list))


def test_erase_without_the_face_models_still_erases_and_says_what_it_could_not_check(
        cli, tmp_path: Path, images: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    run, data = cli
    for f in (data / "models").iterdir():
        f.unlink()  # the models are gone (a box whose vision extra was removed)
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    with Gallery(data, load_key(keyf)) as g:
        g.enroll(Person("p1", "P One", "resident", "2025-01-01"), [np.ones(128, np.float32)])
    (data / "snapshots" / "gate").mkdir(parents=True)
    snap = data / "snapshots" / "gate" / "20251231T080000-000-face.unknown.jpg"
    cv2.imwrite(str(snap), images["collins"])
    code, out = run("faces", "erase", "p1", "--data-dir", str(data), "--key-file", str(keyf), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["embeddings_removed"] == 1 and snap.exists()
    assert doc["unknown_snapshots"]["removed"] == 0 and "not checked" in doc["unknown_snapshots"]["error"]
    with Gallery(data, load_key(keyf)) as g:
        assert g.people() == []
        trail = g.audit()
    assert [r["action"] for r in trail[:2]] == ["faces.erase.snapshots", "faces.erase"]
    assert "not checked" in trail[0]["errors"][0]


def test_erase_that_fails_after_the_gallery_says_what_was_done_and_audits_it(
        cli, tmp_path: Path, images: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    run, data = cli
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    with Gallery(data, load_key(keyf)) as g:
        g.enroll(Person("p1", "P One", "resident", "2025-01-01"), [np.ones(128, np.float32)])
    (data / "snapshots" / "door").mkdir(parents=True)
    named = data / "snapshots" / "door" / "20260101T120000-000-face.recognized~p1.jpg"
    named.write_bytes(b"jpeg")
    stuck = data / "snapshots" / "door" / "20260101T120001-000-face.recognized~p1.jpg"
    stuck.mkdir()  # a snapshot that cannot be unlinked (a directory: even root cannot)
    unknown = data / "snapshots" / "door" / "20251231T080000-000-face.unknown.jpg"
    cv2.imwrite(str(unknown), images["hopper"])
    code, out = run("faces", "erase", "p1", "--data-dir", str(data), "--key-file", str(keyf), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["embeddings_removed"] == 1 and doc["snapshots_removed"] == 1 and not named.exists()
    assert doc["unknown_snapshots"] == {"removed": 0, "checked": 1}  # still checked after the failure
    assert len(doc["errors"]) == 1 and stuck.name in doc["errors"][0]
    with Gallery(data, load_key(keyf)) as g:
        assert g.people() == []
        trail = g.audit()
    assert [r["action"] for r in trail[:2]] == ["faces.erase.snapshots", "faces.erase"]
    assert trail[0]["snapshots"] == 1 and stuck.name in trail[0]["errors"][0]


def _claiming(kind: str, w: int, h: int) -> bytes:
    """A small valid image whose header claims w x h pixels (a decompression bomb in a few hundred bytes)."""
    import struct

    small = np.zeros((16, 16, 3), np.uint8)
    if kind == "jpeg":
        b = bytearray(cv2.imencode(".jpg", small)[1].tobytes())
        i = b.find(b"\xff\xc0")
        b[i + 5:i + 9] = struct.pack(">HH", h, w)
        return bytes(b)
    b = bytearray(cv2.imencode(".png", small)[1].tobytes())
    b[16:24] = struct.pack(">II", w, h)
    return bytes(b)


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["jpeg", "png"]), w=st.integers(1, 65535), h=st.integers(1, 65535),
       tail=st.binary(max_size=64))
def test_a_header_claiming_a_huge_image_is_refused_before_decoding(kind: str, w: int, h: int, tail: bytes) -> None:
    from gateway.cli.images import MAX_DECODE_PIXELS, decode_image, header_size

    data = _claiming(kind, w, h)
    assert header_size(data) == (w, h)
    for cut in range(0, len(data), 7):  # cut short, or cut and followed by anything: never raises
        size = header_size(data[:cut] + tail)
        assert size is None or min(size) >= 0
    if w * h > MAX_DECODE_PIXELS:  # refused from the header: nothing allocated
        frame, why = decode_image(data)
        assert frame is None and why is not None and f"{w}x{h}" in why


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=300),
                      *(st.builds(lambda tail, p=p: p + tail, st.binary(max_size=300))
                        for p in (b"\xff\xd8", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"GIF89a", b"BM",
                                  b"RIFF\x00\x00\x00\x00WEBPVP8X", b"RIFF\x00\x00\x00\x00WEBPVP8L"))))
def test_header_size_takes_any_bytes(data: bytes) -> None:
    from gateway.cli.images import header_size

    size = header_size(data)
    assert size is None or (isinstance(size[0], int) and isinstance(size[1], int) and min(size) >= 0)


def test_identify_plates_and_enroll_refuse_a_32000_px_jpeg_of_631_bytes(
        cli, tmp_path: Path, vision_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    run, data = cli
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(_claiming("jpeg", 32000, 32000))
    # The tool as a site runs it, in its own process: its peak memory stays that of a small run (was 6 GB).
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "vision", "identify", str(bomb), "--data-dir", str(data),
                             "--key-file", str(keyf), "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
    proc.returncode = os.waitstatus_to_exitcode(status)
    doc = json.loads(out)
    assert proc.returncode == 1 and "32000x32000" in doc["images"][0]["error"]
    assert usage.ru_maxrss < 1_000_000  # KB: the face models and Python, not a 3-6 GB frame
    for f in (vision_dir / "models").iterdir():  # the plate models too
        if not (data / "models" / f.name).exists():
            (data / "models" / f.name).symlink_to(f)
    code, out = run("vision", "plates", str(bomb), "--data-dir", str(data), "--json")
    doc = json.loads(out)
    assert code == 1 and "32000x32000" in doc["images"][0]["error"]
    code, out = run("faces", "enroll", "p1", "--image", str(bomb), "--consent", "2025-03-01", "--data-dir", str(data),
                    "--key-file", str(keyf), "--json")
    doc = json.loads(out)
    assert code == 1 and "32000x32000" in doc["images"][0]["reason"]


def test_identify_shrinks_an_image_as_a_camera_does(cli, tmp_path: Path, images: dict[str, np.ndarray],  # type: ignore[no-untyped-def]
                                                   pipeline: FacePipeline) -> None:
    import io

    from gateway.cli.vision_identify import MAX_WIDTH, fit
    from models.config import CameraConfig
    from models.worker import CameraLoop, Out

    run, data = cli
    keyf = tmp_path / "faces.key"
    create_key(keyf)
    big = np.full((1920, 2560, 3), 90, np.uint8)
    size = pipeline.faces(images["collins"])[0].size
    face = cv2.resize(images["collins"], None, fx=50 / size, fy=50 / size, interpolation=cv2.INTER_AREA)
    big[800:800 + face.shape[0], 1200:1200 + face.shape[1]] = face  # a 50 px face in a 2560 px wide photo
    photo = tmp_path / "wide.png"
    cv2.imwrite(str(photo), big)
    camera = CameraConfig.model_validate({"id": "door", "url": "usb:0"})
    loop = CameraLoop(camera, [], Out(io.StringIO(), "door"), None)
    assert camera.max_width == MAX_WIDTH and np.array_equal(fit(big, MAX_WIDTH), loop.fit(big))
    common = ("--data-dir", str(data), "--key-file", str(keyf), "--json")
    doc = json.loads(run("vision", "identify", str(photo), *common)[1])
    (row,) = doc["images"]
    assert doc["max_width"] == 1280 and (row["width"], row["height"]) == (1280, 960)
    assert row["shrunk_from"] == [2560, 1920]
    (seen,) = row["faces"]  # 25 px as the camera analyses it: shown, no event
    assert seen["size_px"] < 32 and seen["event"] is None and "min_event_px" in seen["no_event_because"]
    doc = json.loads(run("vision", "identify", str(photo), "--max-width", "2560", *common)[1])
    (row,) = doc["images"]
    assert "shrunk_from" not in row and row["faces"][0]["size_px"] >= 32 and row["faces"][0]["event"] == "face.unknown"
