"""Cameras: the pinned models their detectors need (present, sha256-verified), and each stream opening.

A stream is opened in a child process (``stream_probe``) killed when its time is up: a camera that accepts the
connection and never sends a frame must not hold doctor. URLs are shown with their password replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from gateway.doctor.context import Context
from gateway.doctor.net import tcp_connect
from gateway.doctor.result import Result, fail, ok, warn

NEEDED: dict[str, tuple[str, ...]] = {
    "faces": ("yunet", "sface"),
    "plates": ("clp_det", "clp_rec", "clp_dict"),
    "falls": ("pose_detection", "pose_landmark"),
}
"""Manifest entries each detector loads (models/faces.py, plates.py, pose.py)."""
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}
STREAM_TIMEOUT = 8.0
"""Seconds a stream may take to open and hand over one frame (less when the camera's stall_timeout is less)."""


def enabled_cameras(ctx: Context) -> list[Any]:
    return [c for c in ctx.config.cameras if c.enabled]


def stream_endpoint(url: str) -> tuple[str, int] | None:
    """Host and port a network camera URL connects to; None for files, usb:N and what does not parse.

    Read on the text as models.config.redact_url does: everything before the last ``@`` is credentials, which
    may hold any character, so no URL parser sees them."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    hostport = rest.rpartition("@")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if hostport.startswith("["):  # [v6]:port
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, ""
    if not host or any(c.isspace() for c in host):
        return None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            return None
        return host, int(port_text)
    return host, DEFAULT_PORTS[scheme]


def _needed(ctx: Context) -> dict[str, list[str]]:
    """Model name -> the cameras that need it."""
    out: dict[str, list[str]] = {}
    for camera in enabled_cameras(ctx):
        for detector in camera.detect:
            for model in NEEDED.get(detector, ()):
                out.setdefault(model, []).append(camera.id)
    return out


def _models(ctx: Context) -> Result:
    from models.fetch import load_manifest, status

    needed = _needed(ctx)
    if not needed:
        return ok("models", "no enabled camera needs a model" if ctx.config.cameras else "no cameras configured")
    dest = ctx.config.store.data_dir / "models"
    manifest = load_manifest()
    user = ctx.host.service_user
    states: dict[str, str] = {}
    for model in sorted(needed):
        state = status(manifest[model], dest)
        if state == "ok" and not user.may(dest / manifest[model].file, read=True):
            state = f"unreadable by {user.name!r}"
        states[model] = state
    details = {"dir": str(dest), "models": states, "needed_by": needed}
    bad = {m: s for m, s in states.items() if s != "ok"}
    if not bad:
        return ok("models", f"{len(states)} models present and verified in {dest}", **details)
    shown = ", ".join(f"{m} ({s})" for m, s in bad.items())
    if any(s.startswith("unreadable") for s in bad.values()):
        advice = f"sudo chown -R {user.name}: {dest}"
    else:
        advice = f"gateway models fetch -c {ctx.config_path} (it checks every file against its pinned sha256)"
    return fail("models", f"{shown} in {dest}", advice, **details)


async def models(ctx: Context) -> Result:
    return await asyncio.to_thread(_models, ctx)


async def _probe_stream(camera: Any, within: float) -> dict[str, Any] | None:
    """The child's answer, or None when it did not give one ``within`` seconds (then it is killed)."""
    body = camera.model_copy(update={"stall_timeout": max(1.0, within - 1)}).model_dump_json().encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.doctor.stream_probe", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(within):
            out, _ = await proc.communicate(body)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"opened": False, "frame": False, "error": "the probe printed nothing"}
    return answer if isinstance(answer, dict) else {"opened": False, "frame": False}


async def camera_stream(ctx: Context, camera: Any, budget: float) -> Result:
    from gateway.cameras import missing_modules
    from models.config import redact_url

    name, shown = f"camera:{camera.id}", redact_url(camera.url)
    details: dict[str, Any] = {"url": shown, "detect": list(camera.detect)}
    missing = missing_modules(camera)
    if missing:
        details["missing"] = missing
        return warn(name, f"vision is not installed here (missing {', '.join(missing)}): this camera is not watched",
                    "install the gateway's vision extra into its venv (it needs a 64-bit OS)", **details)
    if camera.url.startswith("usb:"):
        view = await ctx.daemon()
        seen = next((c for c in (view.observed or {}).get("cameras", []) if c.get("id") == camera.id), None)
        if seen is not None:  # the running worker holds /dev/videoN: its own figures say whether frames come
            details.update(state=seen.get("state"), frames=seen.get("frames"))
            if seen.get("frames"):
                return ok(name, f"{shown}: the running worker has {seen['frames']} frames", **details)
            return fail(name, f"{shown}: the running worker has no frame yet (state {seen.get('state')})",
                        "check the camera is plugged in (ls /dev/video*) and in group video with the service user",
                        **details)
    timeout = min(float(camera.stall_timeout), STREAM_TIMEOUT, budget)
    target = stream_endpoint(camera.url)
    if target is not None:
        unreached = await tcp_connect(*target, min(timeout, 3.0), "the camera")
        if unreached is not None:
            return fail(name, f"{shown}: {unreached.summary}", unreached.advice, reached=unreached.kind, **details)
    answer = await _probe_stream(camera, timeout)
    if answer is None:
        return fail(name, f"{shown} did not open and give a frame within {timeout:g} s",
                    "check the stream path and that the camera sends video (try the same URL in VLC or ffprobe)",
                    **details)
    details.update({k: v for k, v in answer.items() if k in ("opened", "frame", "width", "height", "error")})
    if not answer.get("opened"):
        return fail(name, f"cannot open {shown}" + (f" ({answer['error']})" if answer.get("error") else ""),
                    "check the URL, the user and password, and the stream path (try it in VLC or ffprobe)", **details)
    if not answer.get("frame"):
        return fail(name, f"{shown} opens but sent no frame", "the camera accepts the connection but sends no "
                    "video: check its encoder settings (H.264, substream) and its client limit", **details)
    return ok(name, f"{shown} opens, {answer.get('width')}x{answer.get('height')}", **details)
