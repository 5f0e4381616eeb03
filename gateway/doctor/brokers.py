"""Is every uplink's broker reachable, with the configured TLS and credentials? And when runs its certificate out?

Each broker (each node of a ``hosts`` cluster) is tried in three steps, so the line says which one failed: a
TCP connect, the TLS handshake with the uplink's own context (its ca_file, client certificate and hostname
check; the broker's certificate is kept for the expiry check), then an MQTT CONNECT with its credentials.
Doctor connects as ``<client id>-doctor``: under the daemon's own id the broker would drop the running
daemon's session (MQTT allows one connection per client id). It publishes nothing and sets no will.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from gateway.config.uplink import MqttConfig
from gateway.doctor.certs import judge
from gateway.doctor.context import Context
from gateway.doctor.net import endpoint, explain, tcp_connect
from gateway.doctor.result import Result, Status, fail, ok, warn

STEP_TIMEOUT = 4.0
"""Seconds each step (connect, handshake, CONNACK) may take."""
BROKER_BUDGET = 3 * STEP_TIMEOUT + 1


def doctor_client_id(ctx: Context, config: MqttConfig) -> str:
    return f"{config.client_id or ctx.config.site.id}-doctor"


async def _handshake(host: str, port: int, context: ssl.SSLContext) -> bytes | None:
    """The broker's certificate (DER) after a handshake with ``context``; raises what the handshake raised."""
    async with asyncio.timeout(STEP_TIMEOUT):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _peek_certificate(host: str, port: int) -> bytes | None:
    """The broker's certificate without judging it: for its dates when verification refused it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return await _handshake(host, port, context)
    except (OSError, TimeoutError, ssl.SSLError):
        return None


def _tls_advice(exc: ssl.SSLCertVerificationError, host: str) -> str:
    message = (exc.verify_message or str(exc)).lower()
    if "expired" in message:
        return "the broker's certificate has expired: the platform must renew it (see its cert line)"
    if "hostname" in message or "ip address mismatch" in message:
        return (f"the broker's certificate is not for {host!r}: connect by the name in its certificate, or set "
                "tls.verify_hostname = false (only on a private network)")
    if "self-signed" in message or "local issuer" in message:
        return "ca_file does not hold the CA that signed the broker's certificate: get the right one from the platform"
    return "check ca_file against the broker's certificate"


def _mqtt_advice(text: str, client_id: str) -> str:
    low = text.lower()
    if "not authori" in low or "bad user name" in low or "password" in low:
        return ("the broker refuses these credentials: check username and password / password_file; a broker whose "
                f"ACL admits only known client ids may refuse {client_id!r} (doctor's own id) while the daemon's works")
    if "identifier" in low:
        return f"the broker refuses the client id {client_id!r}: its ACL admits only known ids"
    return "the broker accepts TCP (and TLS) but not this MQTT connection: check the broker's log"


async def _one(host: str, port: int, config: MqttConfig, password: str | None, context: ssl.SSLContext | None,
               client_id: str) -> dict[str, Any]:
    """One broker's verdict: status, summary, advice, and its certificate (DER) when TLS handed one over."""
    import aiomqtt

    where = endpoint(host, port)
    out: dict[str, Any] = {"broker": where, "cert": None}
    unreached = await tcp_connect(host, port, STEP_TIMEOUT, "the broker")
    if unreached is not None:
        return {**out, "status": Status.FAIL, "step": "connect", "summary": unreached.summary,
                "advice": unreached.advice}
    if context is not None:
        try:
            out["cert"] = await _handshake(host, port, context)
        except ssl.SSLCertVerificationError as exc:
            out["cert"] = await _peek_certificate(host, port)
            return {**out, "status": Status.FAIL, "step": "tls",
                    "summary": f"{where}: TLS refused the broker's certificate ({exc.verify_message or exc})",
                    "advice": _tls_advice(exc, host)}
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = "no handshake within the time" if isinstance(exc, TimeoutError) else str(exc)
            return {**out, "status": Status.FAIL, "step": "tls", "summary": f"{where}: TLS handshake failed ({reason})",
                    "advice": "is this port TLS (usually 8883)? does the broker want a client certificate "
                              "(cert_file, key_file)?"}
    try:
        async with asyncio.timeout(STEP_TIMEOUT + 1):
            client = aiomqtt.Client(host, port, identifier=client_id, username=config.username, password=password,
                                    tls_context=context, timeout=STEP_TIMEOUT, keepalive=int(config.keepalive),
                                    **({"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True}
                                       if config.protocol == "5" else {"clean_session": True}))
            async with client:
                pass
    except aiomqtt.MqttError as exc:
        return {**out, "status": Status.FAIL, "step": "mqtt", "summary": f"{where}: MQTT connect refused ({exc})",
                "advice": _mqtt_advice(str(exc), client_id)}
    except (OSError, TimeoutError) as exc:
        found = explain(exc, host, port, STEP_TIMEOUT)
        return {**out, "status": Status.FAIL, "step": "mqtt", "summary": f"{where}: no MQTT answer ({found.summary})",
                "advice": "something listens there, but it is not an MQTT broker answering in time"}
    tls = " with TLS" if context is not None else ""
    user = f", user {config.username!r}" if config.username else ""
    return {**out, "status": Status.OK, "step": "done", "summary": f"{where}{tls}{user}", "advice": ""}


async def broker(ctx: Context, name: str, config: MqttConfig) -> list[Result]:
    """The uplink's line, and with TLS one line for the broker's certificate."""
    from cryptography import x509

    from gateway.northbound.brokers import credentials

    check = f"broker:{name}"
    client_id = doctor_client_id(ctx, config)
    details: dict[str, Any] = {"client_id": client_id, "tls": config.tls is not None, "encoding": config.encoding}
    if not config.enabled:
        return [ok(check, "disabled in the config: everything waits in the outbox", **details)]
    try:
        password, context = credentials(config)
    except PermissionError as exc:  # the config check judged them readable by the service: only this user may not
        return [warn(check, f"not tested: this user may not read its credentials or TLS files ({exc.filename})",
                     "run doctor with sudo to test the credentials: the password and key files are the service's "
                     "alone", **details)]
    except (OSError, ValueError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return [fail(check, f"cannot load its credentials or TLS files: {reason}",
                     "check password_file, ca_file, cert_file and key_file exist and are readable by the service",
                     **details)]
    found = await asyncio.gather(*(_one(host, port, config, password, context, client_id)
                                   for host, port in config.brokers()))
    details["brokers"] = [{k: v for k, v in f.items() if k != "cert"} | {"status": f["status"].value} for f in found]
    good = [f for f in found if f["status"] is Status.OK]
    bad = [f for f in found if f["status"] is not Status.OK]
    if not bad:
        results = [ok(check, "connected to " + ", ".join(f["summary"] for f in good)
                      + f" (as {client_id!r}, a session apart from the daemon's)", **details)]
    elif good:
        results = [warn(check, f"{len(good)} of {len(found)} brokers reachable; {bad[0]['summary']}",
                        bad[0]["advice"], **details)]
    else:
        results = [fail(check, bad[0]["summary"] + (f" (and {len(bad) - 1} more brokers)" if len(bad) > 1 else ""),
                        bad[0]["advice"], **details)]
    certs = [(f["broker"], x509.load_der_x509_certificate(f["cert"])) for f in found if f["cert"]]
    if certs:
        where, soonest = min(certs, key=lambda c: c[1].not_valid_after_utc)
        results.append(judge(f"cert:{name}.broker", f"broker {where}'s certificate", soonest,
                             "the platform must renew the broker's certificate; tell them the date", broker=where))
    return results
