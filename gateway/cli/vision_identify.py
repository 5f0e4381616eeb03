"""`gateway vision identify IMAGE...`: every face in each image, matched against the gallery as a camera would.

For commissioning: which faces a camera at this distance would see, how well each scores against the
enrolled people, and whether it would raise an event (``faces.min_event_px``, ``faces.min_event_score``).
An image wider than ``--max-width`` (default: a camera's ``max_width``, 1280) is shrunk first exactly as
a camera's worker shrinks its frames, so face sizes, boxes and the event verdict are the camera's.
The data dir, config and gallery key are found like the ``gateway faces`` commands find them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json


def add_command(vision_subparsers: Any) -> None:
    from gateway.cli.vision import _common, _key_args

    p = vision_subparsers.add_parser("identify", help="faces in images: box, size, best match, would it raise an "
                                                      "event")
    _common(p)
    _key_args(p)
    p.add_argument("image", type=Path, nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--max-width", type=_width, default=MAX_WIDTH,
                   help=f"shrink wider images to this width first, as a camera does (its max_width; default "
                        f"{MAX_WIDTH})")
    p.set_defaults(fn=cmd_identify)


MAX_WIDTH = 1280
"""A camera's default ``max_width`` (models.config.CameraConfig; a test keeps the two equal)."""


def _width(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a width in pixels, got {text!r}") from None
    if not 160 <= value <= 7680:
        raise argparse.ArgumentTypeError(f"a width between 160 and 7680 px (a camera's range), got {value}")
    return value


def fit(frame: Any, max_width: int) -> Any:
    """A frame as a camera's worker analyses it (models.worker.CameraLoop.fit): wider than ``max_width``,
    shrunk to it with INTER_AREA, aspect kept."""
    import cv2

    h, w = frame.shape[:2]
    if w <= max_width:
        return frame
    return cv2.resize(frame, (max_width, round(h * max_width / w)), interpolation=cv2.INTER_AREA)


def _event(face: Any, person: str | None, cfg: Any) -> tuple[str | None, str]:
    if face.size < cfg.min_event_px:
        return None, f"face {face.size:.0f} px < min_event_px {cfg.min_event_px}"
    if face.score < cfg.min_event_score:
        return None, f"detector score {face.score:.2f} < min_event_score {cfg.min_event_score:.2f}"
    return ("face.recognized" if person else "face.unknown"), ""


def identify(pipeline: Any, gallery: Any, names: dict[str, str], cfg: Any, path: Path,
             max_width: int = MAX_WIDTH) -> dict[str, Any]:
    """One image's row: its faces (in the pixels of the frame a camera would analyse), or an error a person
    can act on."""
    from gateway.cli.images import read_image
    from models.faces import as_bgr

    frame, why = read_image(path)
    bgr = as_bgr(frame)
    if bgr is None:
        return {"image": str(path), "error": why or "not an image these tools take (smaller than 16 px, or too large)"}
    source = (int(bgr.shape[1]), int(bgr.shape[0]))
    bgr = fit(bgr, max_width)
    faces = []
    for face in pipeline.detector.detect(bgr):
        embedded, _ = pipeline.embed(bgr, face)
        match = gallery.match(embedded.embedding, cfg.threshold)
        kind, why = _event(face, match.person, cfg)
        faces.append({
            "box": [round(v) for v in face.box], "size_px": round(face.size), "detector_score": round(face.score, 3),
            "person": match.person, "name": names.get(match.person or ""), "similarity": round(match.score, 3),
            "threshold": cfg.threshold, "event": kind, "no_event_because": why or None,
        })
    row: dict[str, Any] = {"image": str(path), "width": int(bgr.shape[1]), "height": int(bgr.shape[0]),
                           "faces": faces}
    if source != (row["width"], row["height"]):
        row["shrunk_from"] = list(source)
    return row


def _say(row: dict[str, Any], cfg: Any) -> None:
    if "error" in row:
        print(f"{row['image']}: error: {row['error']}")
        return
    faces = row["faces"]
    shrunk = f", shrunk from {row['shrunk_from'][0]}x{row['shrunk_from'][1]} as a camera would" \
        if "shrunk_from" in row else ""
    print(f"{row['image']} ({row['width']}x{row['height']}{shrunk}): {len(faces) or 'no'} "
          f"face{'s' * (len(faces) != 1)}")
    for f in faces:
        who = f["person"] + (f" ({f['name']})" if f["name"] and f["name"] != f["person"] else "") \
            if f["person"] else "unknown"
        x, y, w, h = f["box"]
        event = f["event"] or f"no event: {f['no_event_because']}"
        print(f"    {who:<24} similarity {f['similarity']:.3f} (threshold {f['threshold']:.2f})  "
              f"box {x},{y} {w}x{h}  {f['size_px']} px  detector {f['detector_score']:.2f}  -> {event}")


def cmd_identify(args: argparse.Namespace) -> int:
    from gateway.cli.images import limit_decoding
    from gateway.cli.vision import _data_dir, faces_config, faces_key

    limit_decoding()  # before cv2 is imported
    from models.faces import FacePipeline
    from models.fetch import FetchError
    from models.gallery import Gallery, GalleryError

    data_dir = _data_dir(args)
    cfg = faces_config(args)
    try:
        key = faces_key(args, cfg)
        pipeline = FacePipeline.from_data_dir(data_dir, embedder=cfg.embedder)
        gallery = Gallery(data_dir, key)
    except (GalleryError, FetchError) as exc:
        print(f"vision identify: {exc}", file=sys.stderr)
        return 1
    try:
        names = {p.id: p.name for p in gallery.people()}
        rows = [identify(pipeline, gallery, names, cfg, Path(image), args.max_width) for image in args.image]
    except GalleryError as exc:
        print(f"vision identify: {exc}", file=sys.stderr)
        return 1
    finally:
        gallery.close()
    if args.json:
        print_json({"min_event_px": cfg.min_event_px, "min_event_score": cfg.min_event_score,
                    "max_width": args.max_width, "images": rows})
    else:
        for row in rows:
            _say(row, cfg)
    return 1 if any("error" in r for r in rows) else 0
