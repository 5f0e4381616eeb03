"""`gateway vision plates IMAGE...`: every plate in each image, read as a camera would read one frame.

For commissioning: where the plate is, how wide, what was read with each character's confidence, and
whether a camera would publish it (``plate.read``) or call it unreadable, and why. The site's
[vision.plates] (min_char_conf, local_provinces, detect_max_side) is used when the config can be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json


def add_command(vision_subparsers: Any) -> None:
    from gateway.cli.vision import _common

    p = vision_subparsers.add_parser("plates", help="plates in images: text, per-character confidence, published "
                                                    "or unreadable and why, box, width")
    _common(p)
    p.add_argument("image", type=Path, nargs="+", help="image files (JPEG, PNG, ...)")
    p.set_defaults(fn=cmd_plates)


def plates_config(args: argparse.Namespace) -> Any:
    """The site's [vision.plates], or the defaults when --data-dir is given and there is no config file."""
    from models.config import PlatesConfig

    if args.data_dir is not None and not Path(args.config).is_file():
        return PlatesConfig()
    from gateway.cli.common import load

    return load(args).vision.plates


def read_image(reader: Any, cfg: Any, path: Path) -> dict[str, Any]:
    """One image's row: its plates, or an error a person can act on."""
    from gateway.cli.images import read_image as load
    from models.faces import as_bgr

    frame, why = load(path)
    bgr = as_bgr(frame)
    if bgr is None:
        return {"image": str(path), "error": why or "not an image these tools take (smaller than 16 px, or too large)"}
    plates = []
    for r in reader.read(bgr, min_conf=cfg.min_char_conf, local_provinces=cfg.local_provinces,
                         province_weight=cfg.province_weight, province_conf=cfg.min_province_conf,
                         strict_provinces=cfg.strict_provinces):
        plates.append({
            "text": r.text, "chars": [{"char": c, "conf": round(p, 3)} for c, p in zip(r.text, r.confs, strict=False)],
            "score": round(r.score, 3), "rows": r.rows, "valid_format": r.valid,
            "decision": "plate.read" if r.published else "plate.unreadable", "reason": r.reason,
            "box": [round(v) for v in r.detection.box], "width_px": round(r.width_px, 1),
            "detector_score": round(r.detection.score, 3),
        })
    return {"image": str(path), "width": int(bgr.shape[1]), "height": int(bgr.shape[0]), "plates": plates}


def _say(row: dict[str, Any], min_conf: float) -> None:
    if "error" in row:
        print(f"{row['image']}: error: {row['error']}")
        return
    plates = row["plates"]
    print(f"{row['image']} ({row['width']}x{row['height']}): {len(plates) or 'no'} plate{'s' * (len(plates) != 1)}")
    for p in plates:
        x, y, w, h = p["box"]
        chars = " ".join(f"{c['char']}:{c['conf']:.2f}" for c in p["chars"]) or "-"
        why = "" if p["decision"] == "plate.read" else f" ({p['reason']}; needs every character >= {min_conf:.2f})"
        rows = ", double-row" if p["rows"] == 2 else ""
        print(f"    {p['text'] or '(nothing read)':<10} -> {p['decision']}{why}\n"
              f"        characters {chars}\n"
              f"        box {x},{y} {w}x{h}  width {p['width_px']:.0f} px{rows}  detector {p['detector_score']:.2f}")


def cmd_plates(args: argparse.Namespace) -> int:
    from gateway.cli.images import limit_decoding
    from gateway.cli.vision import _data_dir

    limit_decoding()  # before cv2 is imported
    from models.fetch import FetchError
    from models.plates import PlateReader

    data_dir = _data_dir(args)
    cfg = plates_config(args)
    try:
        reader = PlateReader.from_data_dir(data_dir, max_side=cfg.detect_max_side)
    except (FetchError, OSError, ValueError) as exc:
        print(f"vision plates: {exc}", file=sys.stderr)
        return 1
    rows = [read_image(reader, cfg, Path(image)) for image in args.image]
    if args.json:
        print_json({"min_char_conf": cfg.min_char_conf, "local_provinces": cfg.local_provinces, "images": rows})
    else:
        for row in rows:
            _say(row, cfg.min_char_conf)
    return 1 if any("error" in r for r in rows) else 0
