"""The gateway's BACnet/IP application on bacpypes3: one UDP socket, requests with typed failures.

bacpypes3's service helpers decode a reply against the type the standard promises and let one odd
value fail the whole request; they also signal errors by raising APDUs (BaseException subclasses)
and retry a socket that cannot bind forever in the background. So requests are built here, the
replies' values are handed back as raw tag lists for ``codec`` to judge one by one, every failure
becomes a DriverError or ``Nack``, and the port is checked before bacpypes3 gets it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from bacpypes3.apdu import (
    ErrorRejectAbortNack,
    ReadPropertyACK,
    ReadPropertyMultipleACK,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    SimpleAckPDU,
    SubscribeCOVRequest,
    WhoIsRequest,
    WritePropertyRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyIdentifier, PropertyReference, ReadAccessSpecification
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.errors import ServicesError
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Atomic, ObjectIdentifier, TagList

from drivers.bacnet import codec
from gateway.core.errors import BadResponse, DeviceTimeout, DeviceUnreachable

# bacpypes3 logs through stdlib loggers under "bacpypes3"; failures are reported by the driver,
# with context, so its own messages would only be noise (on stdout for the CLI's --json, too).
_LOG = logging.getLogger("bacpypes3")
_LOG.setLevel(logging.CRITICAL)
_LOG.propagate = False
_LOG.addHandler(logging.NullHandler())

VENDOR_ID = 999  # no vendor id of our own; bacpypes3 uses 999 for its local objects
MAX_APDU = 1476  # the largest APDU BACnet/IP carries unsegmented

Key = tuple[str, int, str]
"""(object type, instance, property): how values are looked up in a read's results."""


class Nack(Exception):
    """The device answered, with an error, a reject or an abort: (kind, reason, code)."""

    def __init__(self, kind: str, reason: str, code: int) -> None:
        super().__init__(f"{kind} {reason}")
        self.kind, self.reason, self.code = kind, reason, code

    @property
    def unsupported(self) -> bool:
        """The device does not implement the service at all (so fall back, do not retry)."""
        return self.reason in ("unrecognized-service", "services/service-request-denied") or \
            self.reason.endswith("/optional-functionality-not-supported")

    @property
    def too_big(self) -> bool:
        """The reply would not fit what the device can send: ask for less at once."""
        return self.reason in ("segmentation-not-supported", "buffer-overflow", "apdu-too-long")


@dataclass(frozen=True, slots=True)
class IAm:
    instance: int
    address: str
    vendor: int
    max_apdu: int
    segmentation: str


Notify = Callable[[Address, int, tuple[str, int], dict[str, TagList]], bool]


class Stack(Application):  # type: ignore[misc]  # bacpypes3 ships no type information
    """bacpypes3's application with COV notifications and I-Ams handed to whoever listens."""

    notify: Notify | None = None
    heard: Callable[[IAm], None] | None = None

    async def do_ConfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        if not self._deliver(apdu):
            raise ServicesError(errorCode="unknownSubscription")  # the device may then drop it
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        self._deliver(apdu)

    def _deliver(self, apdu: Any) -> bool:
        if self.notify is None:
            return False
        values: dict[str, TagList] = {}
        for item in apdu.listOfValues or []:
            if item.value is not None:
                values[str(item.propertyIdentifier)] = item.value.tagList
        monitored = apdu.monitoredObjectIdentifier
        return self.notify(apdu.pduSource, int(apdu.subscriberProcessIdentifier),
                           (str(monitored[0]), int(monitored[1])), values)

    async def do_IAmRequest(self, apdu: Any) -> None:
        if self.heard is not None:
            self.heard(IAm(int(apdu.iAmDeviceIdentifier[1]), str(apdu.pduSource), int(apdu.vendorID),
                           int(apdu.maxAPDULengthAccepted), str(apdu.segmentationSupported)))
        await super().do_IAmRequest(apdu)


def open_stack(ip: str, prefix: int, port: int, instance: int, *, name: str | None = None,
               timeout: float = 3.0, retries: int = 1, objects: Sequence[Any] = (),
               factory: type[Stack] | None = None, **device_properties: Any) -> Stack:
    """A device object (ours, or a simulator's) on one UDP address; call it inside the loop that uses it."""
    if port:  # bacpypes3 retries a failed bind forever, silently: find out now, with the reason
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((ip, port))
            except OSError as exc:
                raise DeviceUnreachable(f"cannot bind {ip}:{port}: {exc.strerror or exc}") from None
    device = DeviceObject(
        objectIdentifier=("device", instance), objectName=name or f"gateway-{instance}",
        vendorIdentifier=VENDOR_ID, maxApduLengthAccepted=MAX_APDU, segmentationSupported="segmented-both",
        apduTimeout=max(1, round(timeout * 1000)), numberOfApduRetries=retries, **device_properties,
    )
    network_port = NetworkPortObject(f"{ip}/{prefix}:{port}", objectIdentifier=("network-port", 1),
                                     objectName="NetworkPort-1")
    app: Stack = (factory or Stack).from_object_list([device, network_port, *objects])
    return app


def limit_of(timeout: float, retries: int) -> float:
    """How long one request may take in all: every try, plus slack for the stack's own timers."""
    return timeout * (retries + 1) + 1.0


async def call(stack: Stack, request: Any, limit: float) -> Any:
    """Send a confirmed request; its acknowledgement, or DeviceTimeout / Nack."""
    where = request.pduDestination
    try:
        async with asyncio.timeout(limit):
            return await stack.request(request)
    except TimeoutError:
        raise DeviceTimeout(f"{where}: no reply within {limit:g}s") from None
    except ErrorRejectAbortNack as nack:
        kind, reason, code = codec.nack_reason(nack)
        if kind == "abort" and reason == "no-response":
            raise DeviceTimeout(f"{where}: no reply (the stack gave up after its retries)") from None
        raise Nack(kind, reason, code) from None


def object_id(object_type: str, instance: int) -> ObjectIdentifier:
    return ObjectIdentifier((object_type, instance))


async def read_property(stack: Stack, address: Address, obj: tuple[str, int], prop: str, limit: float, *,
                        index: int | None = None) -> TagList:
    """One property (one element of an array property with ``index``) as the tag list that carried it."""
    request = ReadPropertyRequest(objectIdentifier=object_id(*obj), propertyIdentifier=PropertyIdentifier(prop),
                                  destination=address)
    if index is not None:
        request.propertyArrayIndex = index
    ack = await call(stack, request, limit)
    if not isinstance(ack, ReadPropertyACK):
        raise BadResponse(f"{address}: {type(ack).__name__} in reply to ReadProperty")
    wildcard = obj[0] == "device" and obj[1] == codec.MAX_INSTANCE  # answered with the device's real instance
    try:
        about = (str(ack.objectIdentifier[0]), int(ack.objectIdentifier[1]))
        if (not wildcard and about != obj) or str(ack.propertyIdentifier) != prop or ack.propertyArrayIndex != index:
            raise BadResponse(f"{address}: reply about {ack.objectIdentifier} {ack.propertyIdentifier}, "
                              f"asked {obj[0]}:{obj[1]} {prop}")
        tags: TagList = ack.propertyValue.tagList
    except (TypeError, ValueError, AttributeError, IndexError) as exc:  # fields missing from the reply
        raise BadResponse(f"{address}: incomplete ReadProperty reply ({exc})") from None
    return tags


async def read_multiple(stack: Stack, address: Address, specs: Sequence[tuple[tuple[str, int], Sequence[str]]],
                        limit: float) -> dict[Key, TagList | None]:
    """One ReadPropertyMultiple; each value as a tag list, or None where the device sent an error."""
    request = ReadPropertyMultipleRequest(
        listOfReadAccessSpecs=_access_specs(tuple((obj, tuple(props)) for obj, props in specs)),
        destination=address,
    )
    ack = await call(stack, request, limit)
    if not isinstance(ack, ReadPropertyMultipleACK):
        raise BadResponse(f"{address}: {type(ack).__name__} in reply to ReadPropertyMultiple")
    results: dict[Key, TagList | None] = {}
    try:
        for result in ack.listOfReadAccessResults or []:
            obj = result.objectIdentifier
            for element in result.listOfResults or []:
                value = element.readResult.propertyValue if element.readResult is not None else None
                key = (str(obj[0]), int(obj[1]), str(element.propertyIdentifier))
                results[key] = value.tagList if isinstance(value, AnyValue) else None  # else: an error in its place
    except (TypeError, ValueError, AttributeError, IndexError) as exc:  # fields missing from the reply
        raise BadResponse(f"{address}: incomplete ReadPropertyMultiple reply ({exc})") from None
    return results


@lru_cache(maxsize=1024)
def _access_specs(specs: tuple[tuple[tuple[str, int], tuple[str, ...]], ...]) -> Any:
    """The encoded shape of a poll's request, built once: bacpypes3 sequences are slow to construct."""
    return SequenceOf(ReadAccessSpecification)([
        ReadAccessSpecification(
            objectIdentifier=object_id(*obj),
            listOfPropertyReferences=[PropertyReference(propertyIdentifier=PropertyIdentifier(p)) for p in props],
        )
        for obj, props in specs
    ])


async def write_property(stack: Stack, address: Address, obj: tuple[str, int], prop: str, value: Atomic,
                         priority: int | None, limit: float) -> None:
    request = WritePropertyRequest(objectIdentifier=object_id(*obj), propertyIdentifier=PropertyIdentifier(prop),
                                   propertyValue=AnyValue(value), destination=address)
    if priority is not None:
        request.priority = priority
    ack = await call(stack, request, limit)
    if not isinstance(ack, SimpleAckPDU):
        raise BadResponse(f"{address}: {type(ack).__name__} in reply to WriteProperty")


async def subscribe(stack: Stack, address: Address, obj: tuple[str, int], process: int, *,
                    lifetime: int | None, confirmed: bool, limit: float) -> None:
    """SubscribeCOV for ``lifetime`` seconds; lifetime None cancels the subscription."""
    request = SubscribeCOVRequest(subscriberProcessIdentifier=process, monitoredObjectIdentifier=object_id(*obj),
                                  destination=address)
    if lifetime is not None:
        request.issueConfirmedNotifications = confirmed
        request.lifetime = lifetime
    ack = await call(stack, request, limit)
    if not isinstance(ack, SimpleAckPDU):
        raise BadResponse(f"{address}: {type(ack).__name__} in reply to SubscribeCOV")


async def who_is(stack: Stack, destination: Address, wait: float, low: int | None = None,
                 high: int | None = None) -> list[IAm]:
    """Send one Who-Is and collect every I-Am heard for ``wait`` seconds, one per device instance."""
    found: dict[int, IAm] = {}

    def heard(i_am: IAm) -> None:
        if (low is None or i_am.instance >= low) and (high is None or i_am.instance <= high):
            found.setdefault(i_am.instance, i_am)

    request = WhoIsRequest(destination=destination)
    if low is not None and high is not None:
        request.deviceInstanceRangeLowLimit = low
        request.deviceInstanceRangeHighLimit = high
    stack.heard = heard
    try:
        await stack.request(request)
        await asyncio.sleep(wait)
    finally:
        stack.heard = None
    return sorted(found.values(), key=lambda i: i.instance)
