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
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from gateway.core.data import Event
from models.events import vision_event
from models.fetch import model_path

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

    def detect(self, bgr: Image) -> list[Face]:
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
            keep = score >= self.score_threshold
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
        kept = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), self.score_threshold, self.nms_threshold)
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


def enrolment_embedding(pipeline: FacePipeline, frame: object, *, min_face: float = ENROL_MIN_FACE,
                        min_sharpness: float = ENROL_MIN_SHARPNESS) -> Vector:
    """The embedding of the one clear, large face in ``frame``, or Rejected saying what is wrong."""
    bgr, found = pipeline.detect(frame)
    if bgr is None:
        raise Rejected("not an image, or smaller than 16 px")
    if not found:
        raise Rejected("no face found")
    if len(found) > 1:
        raise Rejected(f"{len(found)} faces in the image; enrol from an image of one person")
    face = found[0]
    if face.size < min_face:
        raise Rejected(f"face too small ({face.size:.0f} px, need {min_face:.0f})")
    embedded, aligned = pipeline.embed(bgr, face)
    sharp = sharpness(aligned)
    if sharp < min_sharpness:
        raise Rejected(f"face too blurred (sharpness {sharp:.0f}, need {min_sharpness:.0f})")
    assert embedded.embedding is not None
    return embedded.embedding
