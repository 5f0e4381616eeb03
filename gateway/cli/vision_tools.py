"""`gateway vision identify|plates|falls`: the camera models run offline on a site's own images and clips.

For commissioning: the same code the camera workers run, in this process, as fast as the CPU allows,
each with ``--json``. Every tool lives in its own module; this one only hangs them under ``vision``.
"""

from __future__ import annotations

from typing import Any

from gateway.cli import vision_falls, vision_identify, vision_plates


def add_commands(subparsers: Any) -> None:
    vision = subparsers.add_parser(
        "vision", help="run the camera models offline on images and clips (commissioning)",
    ).add_subparsers(dest="sub", required=True)
    for module in (vision_identify, vision_plates, vision_falls):
        module.add_command(vision)
