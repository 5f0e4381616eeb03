"""Certificate expiry: the files the config names, and (from brokers.py) each broker's own certificate.

A mutual-TLS site goes dark on the day its client certificate expires, with nothing on the box to say why but
a handshake error in the journal. Doctor warns 30 days ahead and fails once it has expired (or is not valid
yet: a clock years off makes every certificate look so).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from gateway.doctor.context import Context
from gateway.doctor.result import Result, Status, fail, ok, warn

WARN_DAYS = 30
MAX_PEM = 1 * 2**20


def _subject(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string() or "(no subject)"


def judge(name: str, what: str, cert: Any, renew: str, now: dt.datetime | None = None,
          **details: Any) -> Result:
    """One certificate against the clock: fail when expired or not yet valid, warn within WARN_DAYS."""
    now = now or dt.datetime.now(dt.UTC)
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    days = (after - now).total_seconds() / 86400
    details.update(subject=_subject(cert), not_after=after.isoformat(), not_before=before.isoformat(),
                   days_left=round(days, 1))
    label = f"{what} ({details['subject']})"
    if now < before:
        return fail(name, f"{label} is not valid before {before:%Y-%m-%d}",
                    "this box's clock is probably wrong (see clock), or the certificate was issued for later",
                    **details)
    if days < 0:
        return fail(name, f"{label} expired on {after:%Y-%m-%d}", renew, **details)
    if days < WARN_DAYS:
        return warn(name, f"{label} expires in {days:.0f} days ({after:%Y-%m-%d})", renew + f" before "
                    f"{after:%Y-%m-%d}", **details)
    return ok(name, f"{label} valid until {after:%Y-%m-%d} ({days:.0f} days)", **details)


def cert_files(ctx: Context) -> list[tuple[str, Path, str]]:
    """(config key, file, what to do when it runs out) for every certificate file the config uses."""
    from gateway.northbound.routes import uplink_configs

    cfg = ctx.config
    out: list[tuple[str, Path, str]] = []
    for name, uplink in uplink_configs(cfg).items():
        if not uplink.enabled or uplink.tls is None:
            continue
        where = "mqtt" if name == "mqtt" else f"uplinks.{name}"
        if uplink.tls.ca_file is not None:
            out.append((f"{where}.tls.ca_file", uplink.tls.ca_file,
                        "get the platform's new CA certificate into ca_file, then `gateway reload`"))
        if uplink.tls.cert_file is not None:
            out.append((f"{where}.tls.cert_file", uplink.tls.cert_file,
                        "renew the client certificate (cert_file and key_file), then `gateway reload`"))
    if cfg.web.enabled and cfg.web.tls_cert is not None:
        out.append(("web.tls_cert", cfg.web.tls_cert, "renew [web] tls_cert and tls_key, then restart the service"))
    return out


def _read(path: Path) -> list[Any]:
    from cryptography import x509

    with path.open("rb") as f:
        data = f.read(MAX_PEM + 1)
    if len(data) > MAX_PEM:
        raise ValueError(f"{path} is larger than a certificate file can be")
    return list(x509.load_pem_x509_certificates(data))


async def cert_file(ctx: Context, key: str, path: Path, renew: str) -> Result:
    name = f"cert:{key}"
    try:
        certs = await asyncio.to_thread(_read, path)
    except (OSError, ValueError) as exc:
        return fail(name, f"cannot read a certificate from {path}: {getattr(exc, 'strerror', None) or exc}",
                    "it must be PEM (-----BEGIN CERTIFICATE-----); check the path and the file", path=str(path))
    if not certs:
        return fail(name, f"no certificate in {path}", "it must be PEM (-----BEGIN CERTIFICATE-----)",
                    path=str(path))
    if len(certs) == 1:
        return judge(name, str(path), certs[0], renew, path=str(path))
    # A bundle: any one may be the one that matters. The soonest to run out is named; an expired one among
    # several is a warning, not a failure, since the one the broker chains to may be another.
    results = [judge(name, f"{path} (the soonest of {len(certs)})", c, renew, path=str(path), certificates=len(certs))
               for c in certs]
    soonest = min(results, key=lambda r: float(r.details["days_left"]))
    if soonest.status is Status.FAIL and any(r.status is not Status.FAIL for r in results):
        return warn(name, soonest.summary + "; others in the bundle are valid",
                    "drop the expired certificate from the bundle, or check it is not the one the broker uses",
                    **soonest.details)
    return soonest
