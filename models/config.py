"""The ``[vision]`` and ``[[cameras]]`` config sections.

Plain pydantic, no OpenCV or ONNX Runtime: ``gateway check`` must work on a box without the
vision extra, and the daemon imports this even when no camera is configured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.core.config import Duration, Identifier, StrictModel

# Mirrors models.faces constants without importing it, so config checks work without the vision extra.
DEFAULT_MATCH_THRESHOLD = 0.40

Detector = Literal["faces", "plates", "falls"]
MIN_FALLS_FPS = 2.0
"""The slowest analysed rate a camera with falls may have: a fall that takes one frame has its first horizontal
landmarks up to 2 frame periods after the last upright ones, which must be within the 1 s window (models/falls.py)."""
Point = tuple[float, float]

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
"""Mirrors models.plate_text.PROVINCES (the 31 mainland abbreviations)."""
_PLATE_CHARS = re.compile(r"^[\u4e00-\u9fffA-Z0-9]{7,8}$")


class FacesConfig(StrictModel):
    threshold: float = Field(
        default=DEFAULT_MATCH_THRESHOLD, ge=0.2, le=0.95,
        description="Cosine similarity at or above which a face is an enrolled person (0.40 measured; see "
                    "models/README.md). Lower = more matches and more false matches.",
    )
    embedder: Literal["opencv", "onnxruntime"] = Field(
        default="opencv", description="Runtime for SFace; both give the same vectors, opencv is faster on x86.",
    )
    key_file: Path | None = Field(
        default=None,
        description="Gallery key (32 bytes, mode 0600). Default: the systemd credential faces-key. "
                    "The key itself never goes in this file.",
    )
    min_face_px: int = Field(default=48, ge=16, le=1000, description="Smallest face side accepted for enrolment.")
    min_sharpness: float = Field(
        default=60.0, ge=0, description="Laplacian variance of the aligned face below which enrolment is refused.",
    )
    cooldown: Duration = Field(
        default=30.0, description="Per camera: a recognised person is not reported again for this long (whatever "
                                  "track they are on), and an unknown face is reported once per track and "
                                  "again only if the same track is still there after this long.",
    )
    min_event_px: int = Field(
        default=32, ge=16, le=1000,
        description="Faces smaller than this (shortest box side, frame pixels) are shown but never embedded and "
                    "raise no face event: measured, SFace still separates two people at 24 px (same >= 0.48, "
                    "other <= 0.18) but not at 20 px (same down to 0.32); 32 px keeps same >= 0.69.",
    )
    split_frames: bool = Field(
        default=True,
        description="A frame that finds a new face only detects it; the next frame embeds and matches it without "
                    "detecting, so no frame pays for both (the event comes one frame later). false: the same frame.",
    )
    min_event_score: float = Field(
        default=0.75, ge=0.0, le=1.0,
        description="Detector score a face needs to raise an event: real faces >= 24 px score 0.87+, the false "
                    "faces seen on non-face photos 0.62.",
    )


class PlatesConfig(StrictModel):
    allowlist: list[str] = Field(default_factory=list, description="Plates marked list=allow, e.g. \"京A12345\".")
    blocklist: list[str] = Field(default_factory=list, description="Plates marked list=block (raise an alarm rule).")
    votes: int = Field(default=3, ge=1, le=20, description="Frames that must agree before a plate is reported.")
    window: int = Field(default=5, ge=1, le=50, description="Consecutive frames the votes are counted over.")
    hold: Duration = Field(default=30.0, description="The same plate on the same camera is reported once per hold.")
    detect_max_side: int = Field(default=960, ge=320, le=3840,
                                 description="Frames are shrunk to this longest side for plate detection only "
                                             "(the read uses full resolution; doubtful candidates get a second "
                                             "look at full resolution).")
    min_char_conf: float = Field(
        default=0.85, ge=0.0, le=1.0,
        description="A plate is published only if every character was read with at least this confidence; "
                    "otherwise plate.unreadable (0.85 measured: no wrong plate published on the rendered set).")
    min_province_conf: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="The probability the province character (the first) needs on the average of the frames "
                    "voted (one frame's for a single image), besides min_char_conf; 0 = off (models/README.md: "
                    "measured, not adopted by default).")
    strict_provinces: dict[str, float] = Field(
        default_factory=lambda: {"皖": 0.9},
        description="Provinces the recogniser names when unsure of the glyph, each with the probability it needs "
                    "on the voted frames' average (皖: most wrong plates measured were another province read as 皖; "
                    "models/README.md). A local province is firmed up by the prior first.")
    local_provinces: list[str] = Field(
        default_factory=list,
        description="Province characters most plates here carry, e.g. [\"粤\"]: a prior that firms up a local "
                    "province the evidence ranks first; never publishes a province the model ranked second.")
    province_weight: float = Field(default=30.0, ge=1.0, le=1000.0,
                                   description="How much likelier a local province is than another one, a priori.")
    passage_gap: Duration = Field(default=3.0, description="A plate unseen this long on the analysed frames has "
                                                           "left: its passage ends (one plate.unreadable, if "
                                                           "nothing was read); one seen again where it was, after "
                                                           "frames the motion gate skipped, is the same passage.")
    keep_unreadable: bool = Field(default=True, description="Keep a JPEG crop of each unreadable plate on this box "
                                                            "(<data_dir>/plates/unreadable/<camera>/) for review.")
    unreadable_retention: Duration = Field(default=7 * 86400.0, description="Unreadable crops older than this go.")
    unreadable_max_mb: float = Field(default=50.0, gt=0, description="Oldest unreadable crops go beyond this size.")

    @field_validator("local_provinces")
    @classmethod
    def _provinces(cls, value: list[str]) -> list[str]:
        for p in value:
            if len(p) != 1 or p not in PROVINCES:
                raise ValueError(f"{p!r} is not a province character: one of {PROVINCES}")
        return value

    @field_validator("strict_provinces")
    @classmethod
    def _strict(cls, value: dict[str, float]) -> dict[str, float]:
        for p, need in value.items():
            if len(p) != 1 or p not in PROVINCES:
                raise ValueError(f"{p!r} is not a province character: one of {PROVINCES}")
            if not 0.0 <= need <= 1.0:
                raise ValueError(f"{p}: {need} is not a probability (0-1)")
        return value

    @field_validator("allowlist", "blocklist")
    @classmethod
    def _plates(cls, value: list[str]) -> list[str]:
        out = []
        for plate in value:
            p = plate.replace(" ", "").replace("·", "").upper()
            if not _PLATE_CHARS.match(p):
                raise ValueError(f"{plate!r} is not a plate: write it like \"京A12345\" or \"粤B12345D\"")
            out.append(p)
        return out


class FallsConfig(StrictModel):
    hold: Duration = Field(default=5.0, description="How long a person must stay down after the fall before "
                                                    "fall.detected (fall.suspected is sent at the fall itself); "
                                                    "getting up within this time cancels it.")


class VisionConfig(StrictModel):
    """Models are read from <store.data_dir>/models, where `gateway models fetch` puts them."""

    faces: FacesConfig = Field(default_factory=FacesConfig, description="Face recognition.")
    plates: PlatesConfig = Field(default_factory=PlatesConfig, description="Chinese licence plates.")
    falls: FallsConfig = Field(default_factory=FallsConfig, description="Fall detection.")
    shared_models: bool = Field(
        default=True,
        description="One inference service per model family (faces, plates, pose) serves every camera, so a camera "
                    "adds its capture and tracking only; false = each camera worker loads its own copy of the models "
                    "(360-390 MB a camera).",
    )


def _polygon(points: list[Point]) -> list[Point]:
    if len(points) < 3:
        raise ValueError("a region needs at least 3 points")
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"point ({x}, {y}) is outside the frame: coordinates are fractions 0..1")
    return points


class MotionConfig(StrictModel):
    enabled: bool = Field(default=True, description="Gate the models on motion; off = every frame is analysed.")
    threshold: int = Field(default=25, ge=1, le=255, description="Grey-level change that counts a pixel as moving.")
    min_area: float = Field(default=0.003, gt=0, le=1, description="Fraction of the (unmasked) frame that must "
                                                                  "move to wake the models.")
    hold: Duration = Field(default=3.0, description="Keep analysing this long after the last motion.")
    regions: list[list[Point]] = Field(
        default_factory=list,
        description="Only motion inside these polygons counts (points as fractions 0..1 of width, height).",
    )
    masks: list[list[Point]] = Field(
        default_factory=list, description="Motion inside these polygons is ignored (trees, a clock, a road).",
    )

    @field_validator("regions", "masks")
    @classmethod
    def _polygons(cls, value: list[list[Point]]) -> list[list[Point]]:
        return [_polygon(p) for p in value]


class SnapshotConfig(StrictModel):
    enabled: bool = Field(default=False, description="Keep a JPEG of the frame of each event on this box only. "
                                                     "Off by default: no frame is stored unless you say so.")
    retention: Duration = Field(default=7 * 86400.0, description="Snapshots older than this are deleted.")
    max_mb: float = Field(default=200.0, gt=0, description="Oldest snapshots go first beyond this size.")


class CameraConfig(StrictModel):
    id: Identifier = Field(description="Camera id, used in events and topics.")
    name: str = Field(default="", description="What the property staff call it.")
    enabled: bool = True
    upstream: bool | None = Field(
        default=None,
        description="Its face and plate events: false = recorded on the box only, true = sent upstream; unset = as "
                    "mqtt.keep_local says (by default local). Alarms such as falls always go.",
    )
    url: str = Field(description="rtsp://..., http(s)://... (MJPEG or a stream OpenCV reads), a video file path, "
                                 "or usb:N for /dev/videoN.")
    fps: float = Field(default=5.0, gt=0, le=30, description="Frames analysed per second (the stream may be faster).")
    detect: list[Detector] = Field(default_factory=lambda: list[Detector](["faces"]), description="What to look for.")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gating before any model.")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Local event snapshots.")
    stall_timeout: Duration = Field(default=10.0, description="No frame for this long = stream lost: reconnect.")
    reconnect_max: Duration = Field(default=60.0, description="Longest wait between reconnect attempts.")
    max_width: int = Field(default=1280, ge=160, le=7680, description="Wider frames are downscaled before analysis.")
    realtime: bool = Field(
        default=True,
        description="For a video file: true plays it at its own frame rate, looping, like a live camera; false reads "
                    "it once as fast as the CPU allows (commissioning on recorded footage). Event times are frame "
                    "times either way, so both give the same events at the same times.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        v = value.strip()
        if not v:
            raise ValueError("empty camera url")
        if v.startswith("usb:") and not v[4:].isdigit():
            raise ValueError("usb cameras are written usb:0, usb:1, ... (the N of /dev/videoN)")
        return v

    @field_validator("detect")
    @classmethod
    def _detect(cls, value: list[Detector]) -> list[Detector]:
        if len(set(value)) != len(value):
            raise ValueError("a detector is listed twice")
        return value

    @model_validator(mode="after")
    def _falls_rate(self) -> CameraConfig:
        if "falls" in self.detect and self.fps < MIN_FALLS_FPS:
            raise ValueError(f"fps = {self.fps:g} is too slow for falls: a fall that takes one frame needs at least "
                             f"{MIN_FALLS_FPS:g} analysed frames a second to be seen (models/README.md, Falls)")
        return self


def redact_url(url: str) -> str:
    """The url with any password replaced, for logs and events (camera urls often carry credentials).

    Done on the text, before any parser sees it: a password may hold ``#``, ``/``, ``?`` or ``@``,
    which would make a URL parser take part of it for the path or the fragment and print it. Everything
    between ``://`` and the last ``@`` is credentials; the user name (up to the first ``:``) stays.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"
