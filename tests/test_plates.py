"""Plates: rendered plates pasted with a perspective warp onto a real photograph, format rules, voting."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.plates import (
    PROVINCES,
    REC_HEIGHT,
    REC_WIDTH,
    PlateReader,
    PlateVoter,
    ctc_greedy,
    plate_event,
    valid_plate,
)

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"
BLUE, GREEN_TOP, GREEN_BOTTOM = (181, 79, 26), (120, 230, 170), (60, 190, 110)  # BGR


def random_plates(n: int, seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        head = rng.choice(PROVINCES) + rng.choice(LETTERS)
        kind = i % 4
        if kind == 0:
            tail = "".join(rng.choice(DIGITS) for _ in range(5))
        elif kind == 1:
            tail = rng.choice(LETTERS) + "".join(rng.choice(DIGITS + LETTERS) for _ in range(4))
        elif kind == 2:  # new energy, small car
            tail = rng.choice("DF") + rng.choice(DIGITS + LETTERS) + "".join(rng.choice(DIGITS) for _ in range(4))
        else:
            tail = "".join(rng.choice(DIGITS) for _ in range(5))
        out.append(head + tail)
    return out


def render_plate(text: str) -> np.ndarray:
    """A 440x140 (blue, white text) or 480x140 (new energy: green gradient, black text) plate, BGR."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # claimed features are tested, never skipped
        pytest.fail("Pillow is needed to render test plates: pip install -e '.[test]'")
    if not FONT.is_file():
        pytest.fail(f"{FONT} is missing: apt-get install fonts-wqy-microhei (scripts/setup.sh --test)")
    green = len(text) == 8
    w, h = (480, 140) if green else (440, 140)
    if green:
        ramp = np.linspace(0, 1, h)[:, None, None]
        bgr = (np.array(GREEN_TOP) * (1 - ramp) + np.array(GREEN_BOTTOM) * ramp).repeat(w, axis=1)
        rgb = bgr[:, :, ::-1].astype(np.uint8)
        ink = (0, 0, 0)
    else:
        rgb = np.zeros((h, w, 3), np.uint8) + np.array(BLUE[::-1], np.uint8)
        ink = (255, 255, 255)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((5, 5, w - 6, h - 6), radius=10, outline=ink, width=3)
    font = ImageFont.truetype(str(FONT), 120)
    # GA 36 layout: glyphs 45x90 (43 on 8-character plates), 12 px apart, a dot in a 34 px gap after two.
    cw, gap, dot = (43, 9, 30) if green else (45, 12, 34)
    x = (w - (len(text) * cw + (len(text) - 2) * gap + dot)) / 2
    for i, ch in enumerate(text):
        glyph = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(glyph).text((80, 80), ch, font=font, fill=255, anchor="mm")
        glyph = glyph.crop(glyph.getbbox()).resize((cw, 90), Image.Resampling.LANCZOS)
        img.paste(Image.new("RGB", glyph.size, ink), (round(x), 25), glyph)
        if i == 1:
            draw.ellipse((x + cw + dot / 2 - 5, 65, x + cw + dot / 2 + 5, 75), fill=ink)
            x += cw + dot
        else:
            x += cw + gap
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


def paste(background: np.ndarray, plate: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """The plate, 180-260 px wide with a mild perspective warp, on a 1280x720 copy of the background."""
    frame = cv2.resize(background, (1280, 720))
    ph, pw = plate.shape[:2]
    width = rng.uniform(180, 260)
    height = width * ph / pw
    x, y = rng.uniform(100, 1280 - width - 100), rng.uniform(100, 720 - height - 100)
    jitter = width * 0.06
    dst = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]], dtype=np.float32)
    dst += np.array([[rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)] for _ in range(4)], dtype=np.float32)
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(plate, m, (1280, 720))
    mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), m, (1280, 720))
    frame[mask > 127] = warped[mask > 127]
    return frame, dst


@pytest.fixture(scope="module")
def reader(vision_dir: Path) -> PlateReader:
    return PlateReader.from_data_dir(vision_dir)


@pytest.fixture(scope="module")
def background(vision_dir: Path) -> np.ndarray:
    img = cv2.imread(str(vision_dir / "testdata" / "astronaut.png"))
    assert img is not None
    return img


def test_reads_rendered_plates_on_a_real_photo(reader: PlateReader, background: np.ndarray) -> None:
    rng = random.Random(42)
    plates = random_plates(40)
    assert all(valid_plate(p) for p in plates)
    exact, misses = 0, []
    for text in plates:
        frame, corners = paste(background, render_plate(text), rng)
        reads = reader.read(frame)
        if not reads:
            misses.append((text, "not detected", 0.0))
            continue
        best = reads[0]
        centre = best.detection.corners.mean(axis=0)
        assert np.abs(centre - corners.mean(axis=0)).max() < 20, f"{text}: detected elsewhere"
        if best.text == text:
            exact += 1
            assert best.valid and best.score > 0.5
        else:
            misses.append((text, best.text, round(best.score, 2)))
    rate = exact / len(plates)
    print(f"read exactly: {exact}/{len(plates)} = {rate:.1%}; misses: {misses}")
    assert rate >= 0.9, misses


def test_no_plate_in_a_plain_photo(reader: PlateReader, background: np.ndarray) -> None:
    assert reader.read(cv2.resize(background, (1280, 720))) == []


def test_rectify_gives_the_recogniser_input(reader: PlateReader, background: np.ndarray) -> None:
    frame, corners = paste(background, render_plate("京A12345"), random.Random(1))
    crop = reader.rectify(frame, corners)
    assert crop is not None and crop.shape == (REC_HEIGHT, REC_WIDTH, 3)
    assert reader.recognise(crop)[0] == "京A12345"


@pytest.mark.parametrize("text", ["京A12345", "沪AB1234", "粤BD12345", "粤B·D12345", "粤B12345D", "京A1234警",
                                  "粤Z1234港", "粤Z1234澳", "苏E1234学", "鲁B1234挂", "川A 12345", "京a12345"])
def test_valid_plates(text: str) -> None:
    assert valid_plate(text)


@pytest.mark.parametrize("text", ["", "京", "京A1234", "京A123456", "京I12345", "京AO1234", "XA12345", "A12345",
                                  "京112345", "京A12345警", "京A1234使", "京A12345\n", "粤BD1234A", "粤B1234D5",
                                  "京A12 345X", "港A12345"])
def test_invalid_plates(text: str) -> None:
    assert not valid_plate(text)


@given(st.text())
def test_valid_plate_never_raises(text: str) -> None:
    assert valid_plate(text) in (True, False)


def test_ctc_collapses_repeats_and_drops_blanks() -> None:
    charset = "AB"
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 2]  # A A _ A B B _ _ B -> A A B B
    probs = np.full((len(seq), 3), 0.1, np.float32)
    for t, c in enumerate(seq):
        probs[t, c] = 0.8
    text, score = ctc_greedy(probs, charset)
    assert text == "AABB" and abs(score - 0.8) < 1e-6
    assert ctc_greedy(np.zeros((0, 3), np.float32), charset) == ("", 0.0)


def test_voter_emits_once_for_a_steady_plate() -> None:
    voter = PlateVoter(need=3, window=5, hold=30)
    out = [voter.vote("gate-1", "京A12345", 0.9, now=float(t)) for t in range(20)]
    assert [(o[0], round(o[1], 3)) for o in out if o] == [("京A12345", 0.9)]
    assert out[2] is not None  # the third read wins
    again = voter.vote("gate-1", "京A12345", 0.9, now=40.0)  # after the hold
    assert again is not None and again[0] == "京A12345"
    assert voter.vote("gate-2", "京A12345", 0.8, now=5.0) is None  # cameras vote apart


def test_voter_quiet_on_flicker_and_invalid_reads() -> None:
    voter = PlateVoter(need=3, window=5, hold=30)
    flicker = ["京A12345", "京A12346", "京A1234S", None, "京A12345", "京A12845", "京A12346", None, "京A12345", "X"] * 3
    assert all(voter.vote("gate-1", p, 0.9, now=float(t)) is None for t, p in enumerate(flicker))
    assert all(voter.vote("gate-3", "nonsense", 0.9, now=float(t)) is None for t in range(10))


def test_plate_event() -> None:
    e = plate_event("gate-1", "京A·12345", 0.9871, allowlist=["京A12345"], blocklist=["沪B00000"])
    assert e.kind == "plate.read" and e.source == "gate-1"
    assert e.payload == {"plate": "京A12345", "camera": "gate-1", "score": 0.987, "list": "allowlist"}
    both = plate_event("gate-1", "沪B00000", 0.5, allowlist=["沪B00000"], blocklist=["沪B00000"])
    assert both.payload["list"] == "blocklist"
    assert plate_event("gate-1", "粤B12345", 0.5).payload["list"] is None
    assert not any(isinstance(v, bytes | bytearray) for v in e.payload.values())


frames = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.float32, np.uint16, np.int64, np.bool_]),
               st.tuples(st.integers(0, 90), st.integers(0, 90), st.sampled_from([1, 2, 3, 4])),
               elements=None),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 70), st.integers(0, 70))),
    st.sampled_from([None, b"\x00" * 10, "frame", np.zeros((0, 0, 3), np.uint8), np.array(3.0),
                     np.full((40, 40, 3), np.nan, np.float32), np.zeros((4000, 2, 3), np.uint8)]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_hostile_frames_never_crash(reader: PlateReader, frame: object) -> None:
    for det in reader.detect(frame):
        assert det.corners.shape == (4, 2)
    text, score = reader.recognise(frame)
    assert isinstance(text, str) and 0.0 <= score <= 1.0
    assert isinstance(reader.read(frame), list)


def test_plates_config_defaults_match_the_code() -> None:
    from models import plates
    from models.config import PlatesConfig

    assert PlatesConfig().detect_max_side == plates.DEFAULT_MAX_SIDE
