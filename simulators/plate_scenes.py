"""Plate scenes: rendered Chinese plates on real photographs, the plates evaluation set (fake hardware for tests
and the bench; the daemon never imports this).

A plate is drawn with Pillow in the GA 36 layout (blue: white ink; green new-energy: 8 characters on a
gradient; yellow: black ink, single-row or double-row, trailers ending in 挂) and pasted with a perspective
warp onto a real, freely licensed photograph (the pinned testdata of models/manifest.toml). Conditions are
applied to the whole frame: motion blur, night (dark, sensor noise, headlight glare), JPEG. The same seed
always gives the same scenes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"
BLUE, YELLOW, GREEN_TOP, GREEN_BOTTOM = (181, 79, 26), (20, 190, 245), (120, 230, 170), (60, 190, 110)  # BGR
KINDS = ("blue", "green", "yellow", "yellow2", "trailer")
"""blue and yellow: single-row 440x140; green: new energy 480x140; yellow2: double-row 440x220 (large
vehicles); trailer: double-row, the last character 挂."""
BACKGROUNDS = ("astronaut.png", "grace_hopper.jpg", "camera.png", "rocket.jpg", "brick.png", "gravel.png")
"""The real photographs used as scenes (all in models/manifest.toml [testdata.*], public domain or CC0)."""

Image = NDArray[np.uint8]


class RenderError(RuntimeError):
    """Pillow or the font is missing."""


def random_plate(rng: random.Random, kind: str) -> str:
    """A format-valid plate text for ``kind`` (see KINDS)."""
    head = rng.choice(PROVINCES) + rng.choice(LETTERS)
    if kind == "green":
        if rng.random() < 0.5:  # small car: D/F, then a letter or digit, then 4 digits
            return head + rng.choice("DF") + rng.choice(DIGITS + LETTERS) + "".join(rng.choices(DIGITS, k=4))
        return head + "".join(rng.choices(DIGITS, k=5)) + rng.choice("DF")
    if kind == "trailer":
        return head + "".join(rng.choices(DIGITS, k=4)) + "挂"
    if rng.random() < 0.5:
        return head + "".join(rng.choices(DIGITS, k=5))
    return head + rng.choice(LETTERS) + "".join(rng.choices(DIGITS + LETTERS, k=4))


def _glyph(ch: str, size: tuple[int, int]) -> object:
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(FONT), 120)
    glyph = PILImage.new("L", (160, 160), 0)
    ImageDraw.Draw(glyph).text((80, 80), ch, font=font, fill=255, anchor="mm")
    box = glyph.getbbox()
    if box is not None:
        glyph = glyph.crop(box)
    return glyph.resize(size, PILImage.Resampling.LANCZOS)


def render_plate(text: str, kind: str = "blue") -> Image:
    """The plate as BGR: 440x140 (blue, yellow), 480x140 (green), 440x220 (yellow2, trailer)."""
    try:
        from PIL import Image as PILImage
        from PIL import ImageDraw
    except ImportError:
        raise RenderError("Pillow is needed to render plates: pip install -e '.[test]'") from None
    if not FONT.is_file():
        raise RenderError(f"{FONT} is missing: apt-get install fonts-wqy-microhei (scripts/setup.sh --test)")
    double = kind in ("yellow2", "trailer")
    w, h = (480, 140) if kind == "green" else (440, 220 if double else 140)
    if kind == "green":
        ramp = np.linspace(0, 1, h)[:, None, None]
        bgr = (np.array(GREEN_TOP) * (1 - ramp) + np.array(GREEN_BOTTOM) * ramp).repeat(w, axis=1)
        ink: tuple[int, int, int] = (0, 0, 0)
    else:
        bgr = np.zeros((h, w, 3)) + np.array(BLUE if kind == "blue" else YELLOW)
        ink = (255, 255, 255) if kind == "blue" else (0, 0, 0)
    img = PILImage.fromarray(np.ascontiguousarray(bgr[:, :, ::-1].astype(np.uint8)))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((5, 5, w - 6, h - 6), radius=10, outline=ink, width=3)
    colour = PILImage.new("RGB", (200, 200), ink)

    def put(ch: str, x: float, y: int, size: tuple[int, int]) -> None:
        g = _glyph(ch, size)
        img.paste(colour.crop((0, 0, *size)), (round(x), y), g)  # type: ignore[arg-type]

    if double:  # GA 36 double-row: top 2 characters 80x60 centred, bottom 5 characters 65x110
        put(text[0], 110, 15, (80, 60))
        put(text[1], 250, 15, (80, 60))
        draw.ellipse((215, 40, 225, 50), fill=ink)
        x = (w - (5 * 65 + 4 * 15)) / 2
        for ch in text[2:]:
            put(ch, x, 90, (65, 110))
            x += 65 + 15
    else:  # glyphs 45x90 (43 on 8-character plates), 12 px apart, a dot in a 34 px gap after two
        cw, gap, dot = (43, 9, 30) if len(text) == 8 else (45, 12, 34)
        x = (w - (len(text) * cw + (len(text) - 2) * gap + dot)) / 2
        for i, ch in enumerate(text):
            put(ch, x, 25, (cw, 90))
            if i == 1:
                draw.ellipse((x + cw + dot / 2 - 5, 65, x + cw + dot / 2 + 5, 75), fill=ink)
                x += cw + dot
            else:
                x += cw + gap
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def load_backgrounds(testdata: Path) -> dict[str, Image]:
    """The real photographs of BACKGROUNDS, as BGR; a missing one is an error naming the file."""
    out = {}
    for name in BACKGROUNDS:
        img = cv2.imread(str(testdata / name), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{testdata / name}: missing; run `gateway models fetch --testdata`")
        out[name] = np.asarray(img, dtype=np.uint8)
    return out


@dataclass(frozen=True, slots=True)
class Scene:
    frame: Image
    text: str
    kind: str
    corners: NDArray[np.float32]
    """Where the plate was pasted (TL, TR, BR, BL), frame pixels."""
    width_px: float
    background: str
    conditions: tuple[str, ...]


def paste(background: Image, plate: Image, width: float, rng: random.Random, *, size: tuple[int, int] = (1280, 720),
          tilt: float = 0.06) -> tuple[Image, NDArray[np.float32]]:
    """The plate ``width`` px wide with a perspective warp (corner jitter ``tilt`` x width) on a resized copy of
    the background; the frame and the plate's corners."""
    fw, fh = size
    frame = np.ascontiguousarray(cv2.resize(background, (fw, fh)))
    ph, pw = plate.shape[:2]
    height = width * ph / pw
    margin = max(8.0, width * 0.2)
    x = rng.uniform(margin, max(margin, fw - width - margin))
    y = rng.uniform(margin, max(margin, fh - height - margin))
    jitter = width * tilt
    dst = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]], dtype=np.float32)
    dst += np.array([[rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)] for _ in range(4)], np.float32)
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(plate, m, (fw, fh), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), m, (fw, fh))
    frame[mask > 127] = warped[mask > 127]
    return np.asarray(frame, dtype=np.uint8), dst


def motion_blur(frame: Image, length: int, angle: float = 0.0) -> Image:
    """A straight motion blur ``length`` px long at ``angle`` degrees."""
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0
    m = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    turned = np.asarray(cv2.warpAffine(k, m, (length, length)), dtype=np.float32)
    turned /= max(float(turned.sum()), 1e-6)
    return np.asarray(cv2.filter2D(frame, -1, turned), dtype=np.uint8)


def night(frame: Image, corners: NDArray[np.float32], rng: random.Random) -> Image:
    """Dark (the plate a little less: its own lamp), sensor noise, and two headlight glares beside the plate."""
    h, w = frame.shape[:2]
    out = frame.astype(np.float32) * rng.uniform(0.22, 0.35)
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    mask = np.zeros((h, w), np.float32)
    cv2.fillConvexPoly(mask, corners.astype(np.int32), 1.0)
    out += frame.astype(np.float32) * mask[:, :, None] * 0.3
    pw = float(x1 - x0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for cx in (x0 - pw * 0.6, x1 + pw * 0.6):
        cy = (y0 + y1) / 2 + rng.uniform(-0.2, 0.2) * pw
        r = pw * rng.uniform(0.25, 0.4)
        glare = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out += glare[:, :, None] * np.array([0.95, 1.0, 1.0], np.float32)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    out += np_rng.normal(0, rng.uniform(4, 9), out.shape)
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)


def jpeg(frame: Image, quality: int) -> Image:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)


def make_scene(background: Image, text: str, kind: str, width: float, rng: random.Random, *,
               conditions: tuple[str, ...] = (), size: tuple[int, int] = (1280, 720), name: str = "") -> Scene:
    """One scene: ``conditions`` among perspective (a stronger warp), blur, night, jpeg."""
    tilt = 0.12 if "perspective" in conditions else 0.04
    frame, corners = paste(background, render_plate(text, kind), width, rng, size=size, tilt=tilt)
    if "blur" in conditions:
        frame = motion_blur(frame, max(3, round(width / rng.uniform(25, 40))), rng.uniform(-15, 15))
    if "night" in conditions:
        frame = night(frame, corners, rng)
    if "jpeg" in conditions:
        frame = jpeg(frame, rng.randint(35, 60))
    return Scene(frame, text, kind, corners, float(width), name, conditions)


CONDITIONS = ((), ("perspective",), ("blur",), ("night",), ("jpeg",), ("perspective", "jpeg"),
              ("night", "jpeg"), ("blur", "jpeg"))
"""Cycled through the set, so every kind and width band sees each of them."""


def build_set(testdata: Path, n: int = 240, *, seed: int = 17, size: tuple[int, int] = (1280, 720),
              widths: tuple[float, float] = (60.0, 300.0)) -> list[Scene]:
    """``n`` scenes, the same for the same arguments: kinds cycled (see KINDS), widths spread evenly over
    ``widths`` (shuffled), conditions cycled (see CONDITIONS), backgrounds drawn from the real photographs."""
    rng = random.Random(seed)
    backgrounds = load_backgrounds(testdata)
    names = sorted(backgrounds)
    lo, hi = widths
    spread = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    rng.shuffle(spread)
    scenes = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        conditions = CONDITIONS[(i // len(KINDS)) % len(CONDITIONS)]
        name = rng.choice(names)
        text = random_plate(rng, kind)
        scenes.append(make_scene(backgrounds[name], text, kind, spread[i], rng, conditions=conditions, size=size,
                                 name=name))
    return scenes


def width_band(width: float) -> str:
    """The target bands of the bench: '<80', '80-120', '>=120'."""
    return "<80" if width < 80 else "80-120" if width < 120 else ">=120"


Passage = list[Scene]


def build_passages(testdata: Path, n: int = 100, *, seed: int = 17, frames: int = 5,
                   size: tuple[int, int] = (1280, 720), widths: tuple[float, float] = (60.0, 300.0),
                   local: tuple[str, float] | None = None) -> list[Passage]:
    """``n`` plates each seen on ``frames`` frames, as a camera sees a car pass: the same plate, background and
    conditions, the plate a little nearer each frame (widths 0.94x to 1.06x of its own), placed, warped and
    noised afresh each frame. Kinds, widths and conditions are spread as in :func:`build_set`.

    ``local`` = (province, share): a site's traffic, that share of the plates from the province and the rest
    from any other (drawn apart, so the set is otherwise the same as without it)."""
    rng = random.Random(seed)
    site = random.Random(seed + 7)
    backgrounds = load_backgrounds(testdata)
    names = sorted(backgrounds)
    lo, hi = widths
    spread = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    rng.shuffle(spread)
    passages = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        conditions = CONDITIONS[(i // len(KINDS)) % len(CONDITIONS)]
        name = rng.choice(names)
        text = random_plate(rng, kind)
        if local is not None:
            province, share = local
            head = province if site.random() < share else site.choice(PROVINCES.replace(province, ""))
            text = head + text[1:]
        steps = [0.94 + 0.12 * k / max(1, frames - 1) for k in range(frames)]
        passages.append([make_scene(backgrounds[name], text, kind, spread[i] * s, rng, conditions=conditions,
                                    size=size, name=name) for s in steps])
    return passages
