"""Falls: the real BlazePose models on real photographs animated into falls, sit-downs and get-ups.

Each sequence pastes a real person (the scikit-image "cameraman", the NASA astronaut portrait) into a
640x480 frame and moves it about a pivot at the person's hips, 10 frames a second: standing, falling
(rotated 90° and dropped to the floor in 0.5 s), sitting (hips lowered, torso upright), lying back from
a seat. Every frame goes through the real pose pipeline and its landmarks into the FallDetector: a
frame with no track runs the detector alone (no pose that frame), the next one the landmarks in its crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.core.data import Event, Priority
from models.falls import FallConfig, FallDetector, measure
from models.pose import L_HIP, L_SHOULDER, NOSE, R_HIP, R_SHOULDER, PoseTracker, Roi, ssd_anchors
from simulators.camera import posed

W, H, SIDE = 640, 480, 240
FPS = 10
HOLD = 3.0
# The person in each photograph: a hand-drawn box around the body, one around the face, and the
# approximate hip centre (the animation pivot), all in source pixels (512x512 images), and the turn
# that lays the torso flat (the cameraman stoops 30° forward, so he falls back by 120°).
PEOPLE: dict[str, dict[str, Any]] = {
    "cameraman": {"file": "camera.png", "body": (0, 60, 340, 512), "face": (170, 70, 280, 200),
                  "hips": (73, 346), "fall": -120.0},
    "astronaut": {"file": "astronaut.png", "body": (20, 10, 370, 512), "face": (150, 40, 290, 200),
                  "hips": (170, 520), "fall": -90.0},
}
STAND_HIP_Y, SIT_HIP_Y, FLOOR_HIP_Y = 250.0, 330.0, 390.0

Step = tuple[float, float, float]  # rotation (degrees), hip x, hip y in the frame


@pytest.fixture(scope="module")
def tracker(vision_dir: Path) -> PoseTracker:
    return PoseTracker.from_data_dir(vision_dir, threads=1)


def person(vision_dir: Path, who: str) -> np.ndarray:
    img = cv2.imread(str(vision_dir / "testdata" / PEOPLE[who]["file"]))
    assert img is not None and img.shape[:2] == (512, 512)
    return img


def scene(img: np.ndarray, hips_src: tuple[float, float], step: Step) -> np.ndarray:
    """The person scaled to SIDE px, turned by ``angle`` about the hips, hips placed at (x, y)."""
    angle, x, y = step
    return posed(img, hips_src, angle, x, y, side=SIDE, width=W, height=H)


def ramp(a: Step, b: Step, frames: int) -> list[Step]:
    def at(f: float) -> Step:
        return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f

    return [at(i / frames) for i in range(1, frames + 1)]


LIE_FRAMES = int((HOLD + 1.5) * FPS)


def sequences(fall: float) -> dict[str, list[Step]]:
    """Standing 1 s, then: a 0.5 s fall; a 1 s sit-down; a fall and a 1 s get-up; sitting then lying back."""
    stand, seated = (0.0, 320.0, STAND_HIP_Y), (0.0, 320.0, SIT_HIP_Y)
    lying, reclined = (fall, 360.0, FLOOR_HIP_Y), (fall, 320.0, SIT_HIP_Y + 20)
    return {
        "fall": [stand] * 10 + ramp(stand, lying, 5) + [lying] * LIE_FRAMES,
        "sit": [stand] * 10 + ramp(stand, seated, 10) + [seated] * LIE_FRAMES,
        "fall, get up": [stand] * 10 + ramp(stand, lying, 5) + [lying] * 10 + ramp(lying, stand, 10) + [stand] * 30,
        "sit, lie back": [stand] * 10 + ramp(stand, seated, 15) + [seated] * 10 + ramp(seated, reclined, 20)
        + [reclined] * LIE_FRAMES,
    }


FIRES = {"fall": True, "sit": False, "fall, get up": False, "sit, lie back": False}


def run(tracker: PoseTracker, img: np.ndarray, hips: tuple[float, float], steps: list[Step],
        detector: FallDetector) -> tuple[list[tuple[int, Event]], list[str], int, int]:
    """(frame index, event) of every event, the fall state after each frame, frames with a pose, frames where
    the landmark model lost the person (a detection-only frame is neither)."""
    tracker.reset("cam")
    events, states, posed, lost = [], [], 0, 0
    for k, step in enumerate(steps):
        tracking = tracker.tracking("cam")
        pose = tracker.update("cam", scene(img, hips, step))
        posed += pose is not None
        lost += tracking and pose is None
        events += [(k, e) for e in detector.update("cam", k / FPS, None if pose is None else pose.landmarks)]
        states.append(detector.state("cam"))
    return events, states, posed, lost


# -- the real model on real images -------------------------------------------------------------------


def test_anchor_count() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (2254, 2)
    assert float(anchors.min()) > 0 and float(anchors.max()) < 1


@pytest.mark.parametrize("who", sorted(PEOPLE))
def test_pose_lands_on_the_person(vision_dir: Path, tracker: PoseTracker, who: str) -> None:
    img = person(vision_dir, who)
    tracker.reset("still")
    assert tracker.update("still", img) is None and tracker.tracking("still")  # the detector alone
    pose = tracker.update("still", img)  # the landmarks in the detector's crop
    assert pose is not None and not pose.tracked and pose.presence > 0.9
    x0, y0, x1, y1 = PEOPLE[who]["body"]
    for i in (L_SHOULDER, R_SHOULDER):
        x, y = pose.landmarks[i, :2]
        assert x0 <= x <= x1 and y0 <= y <= y1, (i, x, y)
        assert pose.landmarks[i, 3] > 0.5  # visible
    fx0, fy0, fx1, fy1 = PEOPLE[who]["face"]
    nx, ny = pose.landmarks[NOSE, :2]
    assert fx0 <= nx <= fx1 and fy0 <= ny <= fy1
    shoulders_y = pose.landmarks[[L_SHOULDER, R_SHOULDER], 1].mean()
    assert ny < shoulders_y < pose.landmarks[[L_HIP, R_HIP], 1].mean()  # upright: head, shoulders, hips
    again = tracker.update("still", img)
    assert again is not None and again.tracked  # the second frame needs no detection
    core = [NOSE, L_SHOULDER, R_SHOULDER]  # the same image again: the same head and shoulders, within 5%
    assert np.abs(again.landmarks[core, :2] - pose.landmarks[core, :2]).max() < 25


def test_a_turned_person_is_tracked_until_the_crop_drifts(vision_dir: Path, tracker: PoseTracker) -> None:
    """A person leaning 30° keeps a track from frame to frame; turning on by 25° in small steps, each under the
    per-frame limit, ends it (the crop would crawl behind the body), and the next frame detects again."""
    who = PEOPLE["astronaut"]
    img = person(vision_dir, "astronaut")
    frame = scene(img, who["hips"], (-30.0, 320.0, 250.0))
    roi = tracker.detect_roi(frame)
    assert roi is not None and abs(math.degrees(roi.rotation)) > 20
    tracker.follow("lean", roi)
    for _ in range(3):
        pose = tracker.update("lean", frame)
        assert pose is not None and pose.tracked and tracker.tracking("lean")
    steps = [scene(img, who["hips"], (-30.0 - 5 * k, 320.0, 250.0)) for k in range(1, 9)]
    ended = next((k for k, f in enumerate(steps, 1) if tracker.update("lean", f) and not tracker.tracking("lean")), 0)
    assert 3 <= ended <= 8, ended  # not at the first small step: the drift added up
    # without the drift limit the crop crawls on behind the body, each step under the per-frame limit
    crawling = PoseTracker(tracker.detector, tracker.landmarker, max_drift=math.pi)
    crawling.follow("lean", roi)
    crawling.update("lean", frame)
    assert all(crawling.update("lean", f) is not None and crawling.tracking("lean") for f in steps[:ended])


def test_no_person_no_pose(tracker: PoseTracker) -> None:
    rng = np.random.default_rng(3)
    for frame in (np.full((H, W, 3), 115, np.uint8), rng.integers(0, 255, (H, W, 3), dtype=np.uint8)):
        tracker.reset("empty")
        assert tracker.update("empty", frame) is None and not tracker.tracking("empty")
    # a track pointed at an empty frame is dropped, not kept alive
    tracker.follow("empty", Roi(320, 240, 300, 0.0))
    assert tracker.update("empty", np.full((H, W, 3), 115, np.uint8)) is None
    assert not tracker.tracking("empty")


@pytest.mark.parametrize("who", sorted(PEOPLE))
def test_fall_sequences_on_real_images(vision_dir: Path, tracker: PoseTracker, who: str) -> None:
    img = person(vision_dir, who)
    hips = PEOPLE[who]["hips"]
    for name, steps in sequences(PEOPLE[who]["fall"]).items():
        detector = FallDetector(FallConfig(hold=HOLD))
        events, states, posed, lost = run(tracker, img, hips, steps, detector)
        assert posed >= 0.65 * len(steps) and lost <= 0.05 * len(steps), (name, posed, lost)
        kinds = [e.kind for _, e in events]
        if name.startswith("fall"):  # the fall (frames 10-14) is said at once, with its evidence
            assert kinds[0] == "fall.suspected", (name, events)
            k, suspected = events[0]
            first_down = states.index("down")
            assert k == first_down and 10 <= k <= 15 and (k - 10) / FPS <= 1.0
            assert suspected.priority is Priority.EVENT
            assert suspected.payload["camera"] == "cam" and suspected.payload["hold_s"] == HOLD
            assert suspected.payload["descent_torso"] >= 0.5 and suspected.payload["torso_angle_deg"] > 60
            assert 0 < suspected.payload["descent_s"] <= 1.0
        if FIRES[name]:
            assert kinds == ["fall.suspected", "fall.detected"], (name, events)
            k, event = events[1]
            assert event.priority is Priority.ALARM
            payload = event.payload
            assert payload["camera"] == "cam" and 0 < payload["confidence"] <= 1
            assert k == events[0][0] + HOLD * FPS  # exactly the hold after the fall, in frame time
            assert states[-1] == "alarmed"
        elif name == "fall, get up":
            assert kinds == ["fall.suspected", "fall.cancelled"], events  # said, then cancelled: no alarm
            assert "down" in states and states[-1] == "watching"
        else:
            assert events == [], (name, events)


@pytest.fixture(scope="module")
def slow_analyser(vision_dir: Path) -> Any:
    from models.config import VisionConfig
    from models.fall_analyser import FallAnalyser

    vision = VisionConfig()
    return FallAnalyser("cam", vision.model_copy(update={"falls": vision.falls.model_copy(update={"hold": 2.0})}),
                        vision_dir)


@pytest.mark.parametrize("fps", [2.0, 2.5])
@pytest.mark.parametrize("who", sorted(PEOPLE))
def test_a_fall_in_one_frame_is_caught_at_the_slowest_rates(vision_dir: Path, slow_analyser: Any, who: str,
                                                              fps: float) -> None:
    """At 2 and 2.5 analysed frames a second a fall can take one frame. Detector alone on the frame after a track
    ends, the first horizontal landmarks would come 3 periods (1.5 s, 1.2 s) after the last upright ones, beyond the
    1 s window: no alarm ever (the reviewer's finding). The camera's analyser, as the worker runs it, landmarks the
    detection frame too below 4 fps (models/fall_analyser.py)."""
    img = person(vision_dir, who)
    stand, lying = (0.0, 320.0, STAND_HIP_Y), (float(PEOPLE[who]["fall"]), 360.0, FLOOR_HIP_Y)
    slow_analyser.tracker.reset("cam")
    slow_analyser.falls.reset("cam")
    events = [(k, e.kind) for k, step in enumerate([stand] * 6 + [lying] * 8)
              for e in slow_analyser.analyse(scene(img, PEOPLE[who]["hips"], step), 1000.0 + k / fps)]
    (k1, first), (k2, second) = events
    assert first == "fall.suspected" and (k1 - 6) / fps <= 1.0, events  # within a second of the fall frame
    assert second == "fall.detected" and k2 == k1 + math.ceil(2.0 * fps - 1e-9), events


# -- the logic on hand-made landmark tracks ---------------------------------------------------------


def body(hip_y: float, angle: float = 0.0, torso: float = 100.0, hip_x: float = 300.0) -> np.ndarray:
    """33x4 landmarks: hips at (hip_x, hip_y), shoulders ``torso`` px away at ``angle`` from vertical."""
    lm = np.zeros((33, 4), dtype=np.float32)
    a = math.radians(angle)
    sx, sy = hip_x + torso * math.sin(a), hip_y - torso * math.cos(a)
    lm[[L_HIP, R_HIP], :2] = [[hip_x - 15, hip_y], [hip_x + 15, hip_y]]
    lm[[L_SHOULDER, R_SHOULDER], :2] = [[sx - 20, sy], [sx + 20, sy]]
    lm[NOSE, :2] = [sx + 30 * math.sin(a), sy - 30 * math.cos(a)]
    lm[:, 3] = 1.0
    return lm


def feed(detector: FallDetector, track: Sequence[tuple[float, np.ndarray | None]],
         kind: str = "fall.detected") -> list[tuple[float, Event]]:
    """(time, event) of each ``kind`` event (all kinds if empty)."""
    return [(t, e) for t, lm in track for e in detector.update("c1", t, lm) if not kind or e.kind == kind]


Track = list[tuple[float, np.ndarray | None]]


def fall_track(lie: float, *, get_up_at: float | None = None, fall_time: float = 0.4) -> Track:
    """Standing 1 s, falling (hips down 1.5 torso lengths, torso to 85°) in ``fall_time``, lying ``lie`` s."""
    track: Track = [(i / 10, body(300)) for i in range(10)]
    steps = max(1, round(fall_time * 10))
    for i in range(1, steps + 1):
        f = i / steps
        track.append((round(1 + i / 10, 3), body(300 + 150 * f, 85 * f)))
    landed = 1 + steps / 10
    for i in range(1, round(lie * 10) + 1):
        t = round(landed + i / 10, 3)
        up = get_up_at is not None and t >= get_up_at
        track.append((t, body(300, 5) if up else body(450, 88)))
    return track


def test_fall_fires_once_after_hold() -> None:
    detector = FallDetector(FallConfig(hold=5.0))
    events = feed(detector, fall_track(7.0))
    assert len(events) == 1
    t, event = events[0]
    assert 1.3 + 5.0 - 1e-6 <= t <= 1.3 + 5.0 + 0.11  # horizontal from t = 1.3 (64°), then 5 s down
    assert 0.95 <= event.payload["confidence"] <= 1 and event.payload["descent_torso"] == 1.5
    assert event.payload["torso_angle_deg"] == 88.0
    assert event.source == "c1" and "image" not in str(event.payload)


def test_the_fall_is_suspected_at_once_and_detected_after_the_hold() -> None:
    detector = FallDetector(FallConfig(hold=5.0))
    events = feed(detector, fall_track(7.0), kind="")
    assert [(t, e.kind) for t, e in events] == [(1.3, "fall.suspected"), (6.3, "fall.detected")]
    suspected = events[0][1]
    assert suspected.priority is Priority.EVENT and suspected.source == "c1"
    # at t = 1.3 the torso is at 63.75° (float32 landmarks: 63.7) and the hips 1.125 torso lengths lower than
    # on the standing frames; the last of them, at t = 0.9, was 0.4 s before
    assert suspected.payload == {"camera": "c1", "track": "0", "descent_torso": 1.12, "torso_angle_deg": 63.7,
                                 "descent_s": 0.4, "hold_s": 5.0}
    # got up within the hold: said, then cancelled on the first frame up, never alarmed
    got_up = feed(FallDetector(FallConfig(hold=5.0)), fall_track(7.0, get_up_at=3.0), "")
    assert [(t, e.kind) for t, e in got_up] == [(1.3, "fall.suspected"), (3.0, "fall.cancelled")]
    assert got_up[1][1].payload == {"camera": "c1", "track": "0", "down_s": 1.7}
    assert got_up[1][1].priority is Priority.EVENT


def test_the_same_frames_give_the_same_events_from_any_time_origin() -> None:
    """A clip's frames are timed from 0 by `gateway vision falls` and from the epoch by a camera: frames exactly one
    window (1 s) or one hold apart must be judged alike from both origins."""
    track = fall_track(7.0)  # the frame at t = 1.3 is exactly 1 s after the standing frame at 0.3: the highest
    track[3] = (0.3, body(290))
    for origin in (1_764_900_000.0, 1_764_900_000.123456, 2.0**31):
        shifted = [(origin + t, lm) for t, lm in track]
        here = feed(FallDetector(FallConfig(hold=5.0)), track, kind="")
        there = feed(FallDetector(FallConfig(hold=5.0)), shifted, kind="")
        assert [(round(t, 6), e.kind, e.payload) for t, e in here] == \
            [(round(t - origin, 6), e.kind, e.payload) for t, e in there]
        assert [round(t - origin, 3) for t, _ in there] == [1.3, 6.3]
        assert there[0][1].payload["descent_torso"] in (1.22, 1.23)  # 1.225, from t = 0.3, in the window from either


def test_with_no_hold_both_come_on_the_frame_of_the_fall() -> None:
    events = feed(FallDetector(FallConfig(hold=0.0)), fall_track(2.0), kind="")
    assert [(t, e.kind) for t, e in events] == [(1.3, "fall.suspected"), (1.3, "fall.detected")]


def test_default_hold_is_five_seconds() -> None:
    assert FallConfig().hold == 5.0
    assert feed(FallDetector(), fall_track(4.5)) == []  # horizontal from t = 1.3, track ends at 5.9
    assert len(feed(FallDetector(), fall_track(5.5))) == 1


def test_getting_up_cancels_and_a_second_fall_fires() -> None:
    detector = FallDetector(FallConfig(hold=5.0))
    assert feed(detector, fall_track(7.0, get_up_at=3.0)) == []
    assert detector.state("c1") == "watching"
    later = [(t + 20, lm) for t, lm in fall_track(7.0)]
    assert len(feed(detector, later)) == 1
    assert detector.state("c1") == "alarmed"
    # seen up again: watching, and a new fall can alarm again
    feed(detector, [(40.0, body(300))])
    assert detector.state("c1") == "watching"


def test_sitting_up_on_the_floor_does_not_cancel() -> None:
    track = [(t, body(450, 5) if t > 3 else lm) for t, lm in fall_track(7.0)]
    assert len(feed(FallDetector(FallConfig(hold=5.0)), track)) == 1


def test_sit_down_does_not_fire() -> None:
    track = [(i / 10, body(300)) for i in range(10)]
    track += [(1 + i / 10, body(300 + 15 * i, 10)) for i in range(1, 11)]  # hips 1.5 torsos down in 1 s
    track += [(2 + i / 10, body(450, 10)) for i in range(200)]
    assert feed(FallDetector(FallConfig(hold=2.0)), track) == []


def test_lying_down_slowly_does_not_fire() -> None:
    # hips lowered 1.5 torso lengths over 6 s while the torso tips over: 0.25 torso lengths a second
    track = [(i / 10, body(300 + 150 * i / 60, 90 * i / 60)) for i in range(61)]
    track += [(6 + i / 10, body(450, 90)) for i in range(1, 200)]
    assert feed(FallDetector(FallConfig(hold=2.0)), track) == []
    # sit (1 s), rest (1 s), lie back (1 s): the hips barely move while the torso turns horizontal
    sit = [(i / 10, body(300 + 10 * i)) for i in range(11)] + [(1 + i / 10, body(400)) for i in range(1, 11)]
    sit += [(2 + i / 10, body(400 + i, 9 * i)) for i in range(1, 11)]
    sit += [(3 + i / 10, body(410, 90)) for i in range(1, 100)]
    assert feed(FallDetector(FallConfig(hold=2.0)), sit) == []


def test_a_slow_fall_outside_the_window_does_not_fire_but_a_fast_one_does() -> None:
    # 1.5 torso lengths in 6 s is 0.25 per 1 s window; in 1.2 s it is rapid
    assert feed(FallDetector(FallConfig(hold=2.0)), fall_track(4.0, fall_time=6.0)) == []
    assert len(feed(FallDetector(FallConfig(hold=2.0)), fall_track(4.0, fall_time=1.2))) == 1


def test_missing_frames_during_the_hold_neither_confirm_nor_cancel() -> None:
    track = fall_track(7.0)
    blanked = [(t, None if t > 1.6 else lm) for t, lm in track]
    events = feed(FallDetector(FallConfig(hold=5.0)), blanked)
    assert len(events) == 1
    assert 0 < events[0][1].payload["confidence"] < 1
    # nothing seen before the person was already half down (t = 1.2): no upright frame, no fall
    assert feed(FallDetector(FallConfig(hold=5.0)), [(t, None if t < 1.25 else lm) for t, lm in track]) == []


# -- the alarm it raises: the shipped rule pack (config.example.toml), driven on a stepped clock ------------------


def lounge_rules() -> tuple[Any, Any]:
    """The example config's rules and alarm classes (the fall rule and the built-in "fall" class), and its config."""
    from gateway.config import load_config
    from rules.runtime import RulesRuntime

    cfg = load_config(Path(__file__).resolve().parent.parent / "config.example.toml")
    return RulesRuntime.from_config(cfg, started=T0), cfg


T0 = 1_764_900_000.0


def trail(actions: list[Any], t: float) -> list[tuple[float, str, str | None]]:
    from rules.runtime import Publish

    return [(round(t - T0, 1), a.transition.action, a.transition.tier) for a in actions
            if isinstance(a, Publish) and a.transition is not None]


def test_an_unacknowledged_fall_alarm_escalates_to_the_next_tier() -> None:
    """fall.suspected raises nothing; fall.detected raises the latching fall alarm to the family, and while nobody
    acknowledges it the property staff are called after 60 s and the community after 180 s (the built-in class)."""
    runtime, cfg = lounge_rules()
    detector = FallDetector(FallConfig(hold=cfg.vision.falls.hold))
    seen: list[tuple[float, str, str | None]] = []
    kinds = []
    for t, lm in fall_track(cfg.vision.falls.hold + 1):
        for event in detector.update("elderly-lounge", T0 + t, lm):
            kinds.append(event.kind)
            actions = runtime.event(event, T0 + t)
            if event.kind == "fall.suspected":
                assert actions == [] and runtime.listing() == []  # said, but no alarm
            seen += trail(actions, T0 + t)
    raised = 1.3 + cfg.vision.falls.hold
    assert kinds == ["fall.suspected", "fall.detected"]
    # a momentary event: raised and cleared at once, but a fall latches until someone resets it
    assert seen == [(raised, "raise", "family"), (raised, "clear", None)]
    [alarm] = runtime.listing(everything=True)
    assert alarm["key"] == "fall/elderly-lounge"
    for step in range(1, 301):  # the daemon's clock: a tick every second for 5 minutes
        seen += trail(runtime.tick(T0 + raised + step), T0 + raised + step)
    assert seen[2:] == [(raised + 60, "escalate", "property"), (raised + 180, "escalate", "community")]


def test_an_acknowledged_fall_alarm_stops_escalating() -> None:
    runtime, cfg = lounge_rules()
    detector = FallDetector(FallConfig(hold=cfg.vision.falls.hold))
    for t, lm in fall_track(cfg.vision.falls.hold + 1):
        for event in detector.update("elderly-lounge", T0 + t, lm):
            runtime.event(event, T0 + t)
    raised = T0 + 1.3 + cfg.vision.falls.hold
    assert trail(runtime.command("acknowledge", "fall/elderly-lounge", "guard", raised + 30), raised + 30) \
        == [(round(raised + 30 - T0, 1), "acknowledge", None)]
    assert [x for step in range(1, 301) for x in trail(runtime.tick(raised + step), raised + step)] == []


def test_cameras_and_tracks_are_independent() -> None:
    detector = FallDetector(FallConfig(hold=1.0))
    for t, lm in fall_track(3.0):
        assert detector.update("c2", t, body(300), track="b") == []
        detector.update("c2", t, lm, track="a")
    assert detector.state("c2", "a") == "alarmed" and detector.state("c2", "b") == "watching"
    assert detector.state("c3") == "watching"
    detector.reset("c2")
    assert detector.state("c2", "a") == "watching"


def test_clock_going_backwards_restarts_the_track() -> None:
    detector = FallDetector(FallConfig(hold=5.0))
    feed(detector, fall_track(7.0)[:15])
    assert detector.state("c1") == "down"
    detector.update("c1", 0.0, body(450, 88))
    assert detector.state("c1") == "watching"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        FallConfig(upright=70.0, horizontal=60.0)
    with pytest.raises(ValueError):
        FallConfig(hold=math.nan)
    with pytest.raises(ValueError):
        FallConfig(window=0.0)


def test_measure_refuses_degenerate_landmarks() -> None:
    assert measure(0.0, np.zeros((33, 4), np.float32)) is None  # zero-length torso
    assert measure(0.0, body(300)[:20]) is None
    bad = body(300)
    bad[L_HIP, 0] = np.nan
    assert measure(0.0, bad) is None
    s = measure(0.0, body(300, 90))
    assert s is not None and abs(s.angle - 90) < 1e-6 and abs(s.torso - 100) < 1e-3


# -- hostile input -------------------------------------------------------------------------------------

odd_frames = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.int8]),
               st.tuples(st.integers(0, 70), st.integers(0, 70), st.sampled_from([1, 2, 3, 4]))),
    hnp.arrays(np.float32, st.tuples(st.integers(0, 70), st.integers(0, 70)),
               elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
    hnp.arrays(np.uint8, st.tuples(st.integers(16, 40), st.integers(300, 2000), st.just(3))),
    st.binary(max_size=64),
    st.none(),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(frame=odd_frames)
def test_hostile_frames_never_crash_the_pose_pipeline(tracker: PoseTracker, frame: object) -> None:
    pose = tracker.update("hostile", frame)
    assert pose is None or np.isfinite(pose.landmarks).all()


def test_huge_frames_are_refused_without_work(tracker: PoseTracker) -> None:
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3))  # 81 MP, no memory behind it
    assert tracker.update("huge", huge) is None
    assert tracker.update("huge", np.zeros((16, 5000, 3), np.uint8)) is None  # letterboxed to 1 px high


landmark_arrays = st.one_of(
    st.none(),
    hnp.arrays(st.sampled_from([np.float32, np.float64]),
               st.tuples(st.integers(0, 40), st.integers(0, 6)),
               elements=st.floats(width=32)),
    st.builds(lambda h, a: body(h, a), st.floats(-1e4, 1e4), st.floats(-360, 360)),
)


@settings(max_examples=50, deadline=None)
@given(seq=st.lists(st.tuples(st.floats(-1, 5) | st.sampled_from([math.nan, math.inf]), landmark_arrays),
                    max_size=40),
       hold=st.floats(0, 3))
def test_arbitrary_landmark_sequences_never_crash(seq: list[tuple[float, np.ndarray | None]], hold: float) -> None:
    detector = FallDetector(FallConfig(hold=hold))
    t = 0.0
    for dt, lm in seq:
        t += dt if math.isfinite(dt) else 0.0
        for event in detector.update("x", dt if not math.isfinite(dt) else t, lm):
            if event.kind == "fall.detected":
                assert 0 < event.payload["confidence"] <= 1
            else:
                assert event.kind == "fall.suspected" and event.payload["hold_s"] == round(hold, 2)
        assert detector.state("x") in {"watching", "down", "alarmed"}


# -- slow rates, passers-by, time without frames, the slowest rate allowed ----------------------------------------


def test_a_short_torso_from_a_lagging_crop_does_not_make_a_lie_back_a_fall() -> None:
    """Measured on the cameraman lying back at 3.3 fps: the landmarks in a crop that lags the turning body drew an
    upright torso of 50 px (74-80 px otherwise); in units of it the hips dropped 0.84 and the shoulders 1.82, a fall.
    In units of the lying torso (the longer one), 0.57 and 1.23: not a fall (the shoulders drop less than 1.5)."""
    track: Track = [(0.0, body(320, 0, torso=76)), (0.3, body(311, 7, torso=50))]
    track += [(round(0.9 + i / 10, 1), body(353, 90, torso=74)) for i in range(40)]
    assert feed(FallDetector(FallConfig(hold=1.0)), track, kind="") == []
    # a real fall measured from the same short torso still fires (its shoulders drop 1.7 lying torso lengths)
    track = [(0.0, body(320, 0, torso=76)), (0.3, body(311, 7, torso=50))]
    track += [(round(0.9 + i / 10, 1), body(440, 90, torso=74)) for i in range(40)]
    assert [e.kind for _, e in feed(FallDetector(FallConfig(hold=1.0)), track, kind="")] == \
        ["fall.suspected", "fall.detected"]


def test_someone_else_standing_does_not_cancel_the_fall() -> None:
    """One track follows the best-scoring person: a passer-by standing 2.5 torso lengths away from where the person
    fell is not them getting up (no evidence either way); standing up within a torso length of it is."""
    def with_visitor(dx: float) -> Track:
        return [(t, body(300, 5, hip_x=300 + dx) if 2.5 <= t <= 4.0 else lm) for t, lm in fall_track(7.0)]

    events = feed(FallDetector(FallConfig(hold=5.0)), with_visitor(250), kind="")
    assert [(t, e.kind) for t, e in events] == [(1.3, "fall.suspected"), (6.3, "fall.detected")]
    assert events[1][1].payload["confidence"] < 1  # the passer-by's frames count as frames without the person
    events = feed(FallDetector(FallConfig(hold=5.0)), with_visitor(-250), kind="")
    assert [e.kind for _, e in events] == ["fall.suspected", "fall.detected"]
    events = feed(FallDetector(FallConfig(hold=5.0)), with_visitor(60), kind="")
    assert [(t, e.kind) for t, e in events][:2] == [(1.3, "fall.suspected"), (2.5, "fall.cancelled")]


def test_the_hold_runs_out_on_time_alone() -> None:
    """The stream stalls after the fall: no frame comes, the worker ticks the clock; the alarm comes once the hold has
    run out, once, and not before."""
    detector = FallDetector(FallConfig(hold=5.0))
    events = feed(detector, [(t, lm) for t, lm in fall_track(7.0) if t <= 2.0], kind="")
    assert [(t, e.kind) for t, e in events] == [(1.3, "fall.suspected")]
    assert detector.tick("c1", 6.0) == [] and detector.tick("other", 7.0) == []
    [alarm] = detector.tick("c1", 6.3)
    assert alarm.kind == "fall.detected" and alarm.priority is Priority.ALARM and alarm.payload["down_s"] == 5.0
    assert detector.tick("c1", 9.0) == [] and detector.state("c1") == "alarmed"
    assert detector.update("c1", 9.5, body(450, 88)) == []  # still down, already alarmed


def test_a_camera_with_falls_must_analyse_two_frames_a_second() -> None:
    from pydantic import ValidationError

    from models.config import CameraConfig

    assert CameraConfig(id="a", url="usb:0", fps=2, detect=["falls"]).fps == 2
    assert CameraConfig(id="a", url="usb:0", fps=1, detect=["faces"]).fps == 1
    with pytest.raises(ValidationError, match="too slow for falls"):
        CameraConfig(id="a", url="usb:0", fps=1.5, detect=["faces", "falls"])


# -- the daemon's watch: a suspected fall is never left unanswered (gateway/fall_watch.py), on a stepped clock -------


def test_the_watch_raises_an_unconfirmed_alarm_when_the_camera_never_answers() -> None:
    from gateway.core.timing import ManualClock
    from gateway.fall_watch import MARGIN, FallWatch

    clock = ManualClock()
    watch = FallWatch("lounge", 5.0, clock)
    suspected = {"camera": "lounge", "track": "0", "descent_torso": 1.2, "torso_angle_deg": 80.0, "descent_s": 0.4,
                 "hold_s": 5.0}
    watch.seen("face.unknown", {"camera": "lounge", "score": 0.1})
    watch.seen("fall.suspected", suspected)
    clock._now = 5.0 + MARGIN - 0.01
    assert watch.due() == [] and watch.waiting == 1
    clock._now = 5.0 + MARGIN
    [alarm] = watch.due()
    assert alarm.kind == "fall.detected" and alarm.priority is Priority.ALARM and alarm.source == "lounge"
    assert alarm.payload == {"camera": "lounge", "confidence": 0.5, "track": "0", "descent_torso": 1.2,
                             "torso_angle_deg": 80.0, "down_s": 10.0, "unconfirmed": True, "reason": "no_answer"}
    assert alarm.ts == clock.time()
    assert watch.due() == [] and watch.ended() == []  # once


def test_the_watch_stays_quiet_when_the_camera_answers_and_alarms_at_once_when_the_worker_ends() -> None:
    from gateway.core.timing import ManualClock
    from gateway.fall_watch import FallWatch

    clock = ManualClock()
    watch = FallWatch("lounge", 5.0, clock)
    for answer in ("fall.detected", "fall.cancelled"):
        watch.seen("fall.suspected", {"track": "0"})
        clock._now += 3
        watch.seen(answer, {"track": "0"})
        clock._now += 60
        assert watch.due() == [] and watch.ended() == []
    # two tracks, one answered; the worker exits before the hold ends: the other alarms at once
    watch.seen("fall.suspected", {"track": "0"})
    watch.seen("fall.suspected", {"track": "1"})
    watch.seen("fall.cancelled", {"track": "1"})
    clock._now += 1
    [alarm] = watch.ended()
    assert alarm.payload["reason"] == "worker_exited" and alarm.payload["track"] == "0"
    assert alarm.payload["unconfirmed"] is True and alarm.payload["down_s"] == 1.0
    assert watch.due() == [] and watch.waiting == 0
