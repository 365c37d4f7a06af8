"""The parts of an OpenRTB 2.6 bid request adbid reads, as typed msgspec structures.

Decoding checks types as it goes (a string where a number belongs is an invalid
request). Every field adbid does not read is skipped, as the spec requires of a
bidder, and enumerated values are plain integers, so an unknown value is kept
and ignored where it is used.
"""

from __future__ import annotations

import msgspec


class Format(msgspec.Struct):
    w: int = 0
    h: int = 0


class Banner(msgspec.Struct):
    w: int | None = None
    h: int | None = None
    format: list[Format] = []
    battr: list[int] = []
    btype: list[int] = []


class Video(msgspec.Struct):
    mimes: list[str] = []
    minduration: int | None = None
    maxduration: int | None = None
    protocols: list[int] = []
    w: int | None = None
    h: int | None = None


class Deal(msgspec.Struct):
    id: str
    bidfloor: float = 0.0
    bidfloorcur: str = "USD"  # a deal's floor currency does not inherit the imp's
    wseat: list[str] = []


class Pmp(msgspec.Struct):
    private_auction: int = 0
    deals: list[Deal] = []


class Imp(msgspec.Struct):
    id: str
    banner: Banner | None = None
    video: Video | None = None
    native: dict[str, object] | None = None
    pmp: Pmp | None = None
    bidfloor: float = 0.0
    bidfloorcur: str = "USD"
    secure: int | None = None
    exp: int | None = None
    tagid: str | None = None


class Publisher(msgspec.Struct):
    id: str | None = None


class Site(msgspec.Struct):
    id: str | None = None
    domain: str | None = None
    page: str | None = None
    cat: list[str] = []
    keywords: str | None = None
    publisher: Publisher | None = None


class App(msgspec.Struct):
    id: str | None = None
    bundle: str | None = None
    domain: str | None = None
    name: str | None = None
    cat: list[str] = []
    keywords: str | None = None
    publisher: Publisher | None = None


class Geo(msgspec.Struct):
    country: str | None = None  # ISO-3166-1 alpha-3


class Device(msgspec.Struct):
    devicetype: int | None = None
    geo: Geo | None = None
    ifa: str | None = None
    lmt: int | None = None
    ua: str | None = None


class ConsentExt(msgspec.Struct):
    consent: str | None = None  # before 2.6, user.ext.consent
    gdpr: int | None = None  # before 2.6, regs.ext.gdpr


class User(msgspec.Struct):
    id: str | None = None
    buyeruid: str | None = None
    consent: str | None = None
    ext: ConsentExt | None = None


class Regs(msgspec.Struct):
    gdpr: int | None = None
    coppa: int | None = None
    ext: ConsentExt | None = None


class BidRequest(msgspec.Struct):
    id: str
    imp: list[Imp]
    site: Site | None = None
    app: App | None = None
    device: Device | None = None
    user: User | None = None
    regs: Regs | None = None
    tmax: int | None = None
    at: int = 2  # the spec's default: second price
    test: int = 0
    cur: list[str] = []
    bcat: list[str] = []
    badv: list[str] = []
    bapp: list[str] = []
    bseat: list[str] = []
    wseat: list[str] = []


DECODER = msgspec.json.Decoder(BidRequest)
ENCODER = msgspec.json.Encoder()
