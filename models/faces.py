"""Faces: YuNet detection, 5-point alignment, SFace embedding.

Measured on one x86 core: YuNet on ONNX Runtime with our own letterbox and decoding takes 12-16 ms
at 640x480, ``cv2.FaceDetectorYN`` 18 ms, and the wrapper's behaviour moves with the OpenCV build
(5.0 warns that its new graph engine ignores targets), so detection runs on ONNX Runtime. For SFace
the reverse holds: ``cv2.dnn`` gives the same vector (cosine 1.000) in 21-25 ms against 38-48 ms for
ONNX Runtime, so the embedder defaults to OpenCV, with ONNX Runtime one argument away
(``embedder="onnxruntime"``) for boards where it wins. Alignment is ours (5-point similarity).

Frames come from cameras and are hostile: :func:`as_bgr` turns anything into a BGR uint8 image or
None, and the pipeline returns no faces rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.core.data import Event
from models.events import vision_event
from models.fetch import model_path

if TYPE_CHECKING:
    import onnxruntime as ort

Image = NDArray[np.uint8]
Vector = NDArray[np.float32]

DEFAULT_MATCH_THRESHOLD = 0.40
"""Cosine similarity at or above which a face is the enrolled person (see README figures)."""

MIN_SIDE = 16
"""Frames with a side shorter than this cannot hold a detectable face: no faces, no work."""
MAX_PIXELS = 50_000_000
"""Frames larger than this (e.g. 8K is 33 MP) are refused rather than resized at great cost."""

# Where SFace expects the eyes, nose tip and mouth corners in its 112x112 input (ArcFace layout).
REFERENCE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = 112


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face: box (x, y, w, h) and 5 landmarks in frame pixels, detector score, embedding."""

    box: tuple[float, float, float, float]
    landmarks: NDArray[np.float32]
    score: float
    embedding: Vector | None = None

    @property
    def size(self) -> float:
        return min(self.box[2], self.box[3])


def as_bgr(frame: object) -> Image | None:
    """Any array a camera or a file could hand us, as contiguous BGR uint8; None if it cannot be one."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        return None
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        return None
    h, w = frame.shape[:2]
    if min(h, w) < MIN_SIDE or h * w > MAX_PIXELS:
        return None
    a: NDArray[Any] = frame
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if float(f.max()) <= 1.0:  # a 0..1 float image
            f = f * 255.0
        a = np.clip(f, 0, 255).astype(np.uint8)
    else:  # complex, object, strings
        return None
    if a.ndim == 2 or a.shape[2] == 1:
        a = cv2.cvtColor(a.reshape(h, w), cv2.COLOR_GRAY2BGR)
    elif a.shape[2] == 4:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a, dtype=np.uint8)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort  # here, not at the top: a camera worker fed by a shared service never loads it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the shipped files list weights as graph inputs: one warning per weight
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class FaceDetector:
    """YuNet (2023mar): a fixed 640x640 input; the frame is scaled to fit and padded right/bottom."""

    STRIDES = (8, 16, 32)

    def __init__(self, path: Path, *, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 threads: int = 1) -> None:
        self.session = _session(path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 640
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.grids: dict[int, NDArray[np.float32]] = {}
        for stride in self.STRIDES:
            n = self.size // stride
            rows, cols = np.mgrid[0:n, 0:n]
            self.grids[stride] = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)

    def detect(self, bgr: Image, score_threshold: float | None = None) -> list[Face]:
        """Faces scoring at least ``score_threshold`` (default: the detector's own), best first."""
        floor = self.score_threshold if score_threshold is None else score_threshold
        h, w = bgr.shape[:2]
        scale = min(self.size / w, self.size / h)
        nw, nh = max(1, min(self.size, round(w * scale))), max(1, min(self.size, round(h * scale)))
        canvas = np.zeros((self.size, self.size, 3), dtype=np.float32)
        canvas[:nh, :nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        blob = canvas.transpose(2, 0, 1)[None]
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: blob}), strict=True))
        boxes, scores, marks = [], [], []
        for stride in self.STRIDES:
            grid = self.grids[stride]
            cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = score >= floor
            if not keep.any():
                continue
            g = grid[keep]
            bbox = outputs[f"bbox_{stride}"][0][keep]
            kps = outputs[f"kps_{stride}"][0][keep].reshape(-1, 5, 2)
            centre = (g + bbox[:, :2]) * stride
            wh = np.exp(np.clip(bbox[:, 2:4], -10, 10)) * stride
            boxes.append(np.concatenate([centre - wh / 2, wh], axis=1))
            marks.append((g[:, None, :] + kps) * stride)
            scores.append(score[keep])
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes) / scale
        all_marks = np.concatenate(marks) / scale
        all_scores = np.concatenate(scores)
        kept = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), floor, self.nms_threshold)
        faces = []
        for i in np.asarray(kept, dtype=np.int64).ravel():
            x, y, bw, bh = (float(v) for v in all_boxes[i])
            faces.append(Face((x, y, bw, bh), all_marks[i].astype(np.float32), float(all_scores[i])))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


def similarity_transform(src: NDArray[Any], dst: NDArray[Any]) -> NDArray[np.float64]:
    """Least-squares rotation + uniform scale + translation taking src points onto dst (2x3 matrix)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = float((sig * np.diag(sign)).sum() / var_s) if var_s > 1e-12 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(bgr: Image, landmarks: NDArray[Any]) -> Image:
    """The 112x112 crop SFace expects: the 5 landmarks moved onto REFERENCE_5."""
    m = similarity_transform(landmarks, REFERENCE_5)
    out = cv2.warpAffine(bgr, m, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return np.asarray(out, dtype=np.uint8)


def _unit(vec: NDArray[Any]) -> Vector:
    v = np.asarray(vec, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 and np.isfinite(norm) else np.zeros_like(v)


class FaceEmbedder:
    """SFace (2021dec) on ONNX Runtime: aligned 112x112 RGB, raw 0..255, to a unit-length 128-d vector."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.session = _session(path, threads)
        self.input_name: str = self.session.get_inputs()[0].name

    def embed(self, aligned: Image) -> Vector:
        blob = aligned[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        return _unit(self.session.run(None, {self.input_name: blob})[0])


class OpenCVFaceEmbedder:
    """The same SFace file on OpenCV's DNN module: identical vectors (cosine 1.000), twice as fast on x86.

    Plain ``cv2.dnn`` on our own aligned crop, not the ``FaceRecognizerSF`` wrapper.
    """

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        cv2.setNumThreads(threads)
        self.net = cv2.dnn.readNetFromONNX(str(path))

    def embed(self, aligned: Image) -> Vector:
        self.net.setInput(cv2.dnn.blobFromImage(aligned, 1.0, (ALIGNED_SIZE, ALIGNED_SIZE), (0, 0, 0), swapRB=True))
        return _unit(self.net.forward())


EMBEDDERS: dict[str, type[FaceEmbedder] | type[OpenCVFaceEmbedder]] = {
    "onnxruntime": FaceEmbedder,
    "opencv": OpenCVFaceEmbedder,
}
DEFAULT_EMBEDDER = "opencv"


def sharpness(aligned: Image) -> float:
    """Variance of the Laplacian of the aligned face: low means blurred."""
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def cosine(a: Vector, b: Vector) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


class FacePipeline:
    """Detect, align, embed. ``faces(frame)`` never raises on a bad frame: it returns []."""

    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder | OpenCVFaceEmbedder) -> None:
        self.detector = detector
        self.embedder = embedder

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, threads: int = 1, score_threshold: float = 0.6,
                      embedder: str = DEFAULT_EMBEDDER) -> FacePipeline:
        return cls(
            FaceDetector(model_path(data_dir, "yunet"), score_threshold=score_threshold, threads=threads),
            EMBEDDERS[embedder](model_path(data_dir, "sface"), threads=threads),
        )

    def detect(self, frame: object) -> tuple[Image | None, list[Face]]:
        bgr = as_bgr(frame)
        if bgr is None:
            return None, []
        return bgr, self.detector.detect(bgr)

    def embed(self, bgr: Image, face: Face) -> tuple[Face, Image]:
        aligned = align(bgr, face.landmarks)
        return Face(face.box, face.landmarks, face.score, self.embedder.embed(aligned)), aligned

    def faces(self, frame: object) -> list[Face]:
        bgr, found = self.detect(frame)
        if bgr is None:
            return []
        return [self.embed(bgr, f)[0] for f in found]


def face_events(camera: str, results: list[tuple[str | None, float]]) -> list[Event]:
    """``face.recognized`` / ``face.unknown`` for (person id or None, best score) pairs: ids only, no image."""
    events = []
    for person, score in results:
        if person is not None:
            events.append(vision_event("face.recognized", camera,
                                       {"person": person, "camera": camera, "score": round(score, 3)}))
        else:
            events.append(vision_event("face.unknown", camera, {"camera": camera, "score": round(score, 3)}))
    return events


class Rejected(Exception):
    """An enrolment image that must not be used, with the reason a person can act on."""


ENROL_MIN_FACE = 48
"""Shortest side of the face box, in pixels, for an enrolment image."""
ENROL_MIN_SHARPNESS = 60.0
"""Laplacian variance of the aligned 112x112 face; a sharp portrait gives 500+, a blurred one < 30."""
ENROL_MIN_SCORE = 0.75
"""Detector score below which an enrolment face is refused (real portraits score 0.87-0.93)."""
ENROL_LIGHT = (45.0, 210.0)
"""Mean grey level of the aligned face outside which it is too dark / too bright to enrol."""
ENROL_MAX_TURN = 0.30
"""Nose offset from the eyes' midline, in eye distances, above which the face is turned away."""
BORDERLINE = 1.25
"""A figure within this factor of its limit is accepted but said to be borderline."""
FRONTAL_PITCH = 0.06
"""``pitch`` of a face looking at the camera (0.04-0.13 on the 20 frontal test portraits)."""
_LOOK_FLOOR = 0.3
"""Detector score down to which enrolment looks, to say "a face scored 0.45, need 0.75" instead of "no face"."""


@dataclass(frozen=True, slots=True)
class Check:
    """One measured figure of an enrolment image against its limit, and what to do about it."""

    code: str  # no_face, faces, small, blurry, dark, bright, turned, score, unreadable
    figure: float
    limit: float
    message: str
    advice: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class Assessment:
    """What enrolment thinks of one image: accepted (with the embedding) or not, and why, with figures."""

    checks: tuple[Check, ...]
    embedding: Vector | None = None
    box: tuple[float, float, float, float] | None = None

    @property
    def accepted(self) -> bool:
        return self.embedding is not None and not any(c.fatal for c in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(f"{c.message} -> {c.advice}" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "box": None if self.box is None else [round(v) for v in self.box],
                "checks": [{"code": c.code, "figure": round(c.figure, 3), "limit": c.limit, "fatal": c.fatal,
                            "message": c.message, "advice": c.advice} for c in self.checks]}


def turn(landmarks: NDArray[Any]) -> tuple[float, float]:
    """(yaw, pitch) from the 5 landmarks, in eye distances: 0 for a frontal face.

    yaw: the nose tip's offset from the midpoint of the eyes along the eye line; pitch: how far the
    nose sits from halfway between the eye line and the mouth line, less FRONTAL_PITCH.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eyes = (lm[0] + lm[1]) / 2
    mouth = (lm[3] + lm[4]) / 2
    axis = lm[1] - lm[0]
    dist = float(np.linalg.norm(axis))
    if dist < 1e-6:
        return 9.0, 9.0
    unit = axis / dist
    yaw = float(np.dot(lm[2] - eyes, unit)) / dist
    down = float(np.linalg.norm(mouth - eyes))
    pitch = (float(np.dot(lm[2] - eyes, mouth - eyes)) / max(down, 1e-6) - down / 2) / dist if down > 1e-6 else 9.0
    return yaw, pitch - FRONTAL_PITCH


def _check(code: str, figure: float, limit: float, bad: bool, near: bool, message: str, advice: str) -> list[Check]:
    """``message`` says the problem ("face too small (40 px, need 48)"); a borderline pass is said so."""
    if bad:
        return [Check(code, figure, limit, message, advice, True)]
    if near:
        what, _, figures = message.partition(" (")
        return [Check(code, figure, limit, f"accepted but borderline: {what.replace(' too ', ' nearly too ')} "
                                           f"({figures}", advice, False)]
    return []


def assess_enrolment(pipeline: FacePipeline, frame: object, *, min_face: float = ENROL_MIN_FACE,
                     min_sharpness: float = ENROL_MIN_SHARPNESS, min_score: float = ENROL_MIN_SCORE) -> Assessment:
    """Every figure of an enrolment image against its limit; accepted when none fails.

    A figure within BORDERLINE of its limit is accepted with a note, so whoever enrols sees which
    images are weak and can add a better one.
    """
    bgr = as_bgr(frame)
    if bgr is None:
        return Assessment((Check("unreadable", 0, MIN_SIDE, "not an image, or smaller than 16 px",
                                 "use a photo (JPEG/PNG) of the person", True),))
    found = pipeline.detector.detect(bgr, min(_LOOK_FLOOR, min_score))
    confident = [f for f in found if f.score >= min_score]
    if not found:
        return Assessment((Check("no_face", 0, min_score, "no face found",
                                 "use a photo with the whole face, from the front, well lit", True),))
    if not confident:
        best = found[0]
        return Assessment((Check("score", best.score, min_score,
                                 f"no clear face: the best face-like region scores {best.score:.2f} "
                                 f"(need {min_score:.2f})",
                                 "use a sharper, frontal, well lit photo of the face", True),), box=best.box)
    if len(confident) > 1:
        sizes = ", ".join(f"{f.size:.0f}" for f in confident)
        return Assessment((Check("faces", len(confident), 1, f"{len(confident)} faces in the image ({sizes} px)",
                                 "crop the image to the one person being enrolled", True),))
    face = confident[0]
    checks: list[Check] = []
    checks += _check("small", face.size, min_face, face.size < min_face, face.size < min_face * BORDERLINE,
                     f"face too small ({face.size:.0f} px, need {min_face:.0f})",
                     "take the photo closer or at a higher resolution")
    checks += _check("score", face.score, min_score, False, face.score < min(0.99, min_score * 1.1),
                     f"low detector score ({face.score:.2f}, need {min_score:.2f})",
                     "a frontal, evenly lit, unobstructed face scores higher")
    yaw, pitch = turn(face.landmarks)
    worst = max(abs(yaw), abs(pitch))
    checks += _check("turned", worst, ENROL_MAX_TURN, worst > ENROL_MAX_TURN, worst > ENROL_MAX_TURN / BORDERLINE,
                     f"face turned away (yaw {yaw:+.2f}, pitch {pitch:+.2f} eye distances, "
                     f"limit {ENROL_MAX_TURN:.2f})", "the person should look straight at the camera")
    embedded, aligned = pipeline.embed(bgr, face)
    sharp = sharpness(aligned)
    checks += _check("blurry", sharp, min_sharpness, sharp < min_sharpness, sharp < min_sharpness * BORDERLINE,
                     f"face too blurred (sharpness {sharp:.0f}, need {min_sharpness:.0f})",
                     "hold the camera still, focus on the face, use more light")
    light = float(cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)[16:100, 16:96].mean())
    dark, bright = ENROL_LIGHT
    checks += _check("dark", light, dark, light < dark, light < dark * BORDERLINE,
                     f"face too dark (mean grey {light:.0f}, need {dark:.0f})", "more light on the face, no backlight")
    checks += _check("bright", light, bright, light > bright, light > 255 - (255 - bright) * BORDERLINE,
                     f"face too bright (mean grey {light:.0f}, limit {bright:.0f})", "less direct light or flash")
    return Assessment(tuple(checks), embedded.embedding, face.box)


def enrolment_embedding(pipeline: FacePipeline, frame: object, *, min_face: float = ENROL_MIN_FACE,
                        min_sharpness: float = ENROL_MIN_SHARPNESS) -> Vector:
    """The embedding of the one clear, large face in ``frame``, or Rejected saying what is wrong."""
    result = assess_enrolment(pipeline, frame, min_face=min_face, min_sharpness=min_sharpness)
    if not result.accepted:
        raise Rejected("; ".join(f"{c.message} -> {c.advice}" for c in result.checks if c.fatal))
    assert result.embedding is not None
    return result.embedding
