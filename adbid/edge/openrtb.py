"""OpenRTB 2.6: a bid request's impressions as pipeline events, decisions as a bid response.

Each `imp` is one event. What maps where:
- user key: `user.buyeruid`, else `user.id`, else `device.ifa`; none at all when
  `device.lmt` is 1, when the IFA is zeroed, or when `regs.gdpr` is 1 and there is no
  consent string (`user.consent`, or `user.ext.consent`): such an auction is bid on
  context alone, and frequency-capped campaigns do not bid on it;
- context: `site.keywords`, the words of `site.page`'s path, `site.cat`; or the
  app's name, keywords and categories. `site.domain` (or `app.bundle`) is the site;
- `device.geo.country` (ISO-3166 alpha-3) and `device.devicetype`;
- the first size of `imp.banner.format` (or `w`/`h`) adbid knows; the floor
  `imp.bidfloor` in `imp.bidfloorcur`, converted to account micros rounded up;
- `at` 1 is first price, anything else second price (the spec's default is 2);
  `test` 1 is test traffic; `bcat` and `badv` are the publisher's blocks, and so are
  `banner.battr` (creatives with such an attribute are not shown) and `banner.btype`
  (adbid's banners are XHTML banner ads, type 2). No campaign promotes an app, so
  `bapp` has nothing to block.

A video impression is bid on only with a video creative whose duration, mime type
and protocol fit it (answered with VAST 3.0 markup, `mtype` 2); an impression with
a banner and a video object may get either. Impressions adbid does not bid on, and
why (each is a no-bid for that imp): a video impression no creative fits, a native
one (the world has no native creatives), a private auction (`pmp.private_auction`
1) that names no deal adbid sells, a seat excluded by `wseat` / `bseat`. A request
with no currency in `cur` that adbid prices in gets no bid at all.

Deals: an imp naming a deal of the world (`pmp.deals[].id`, seats allowing adbid's)
is bid on by that deal's campaign with `dealid` when its bid meets the higher of the
deal's floor and the request's `bidfloor` for it (in the deal's own `bidfloorcur`,
USD when absent). In a private auction only those campaigns may bid, and a bid
under its deal's floor is withdrawn, never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from adbid.edge.decode import BadRequest, EventRows
from adbid.edge.openrtb_types import BidRequest, Imp
from adbid.stages.decision import Decisions
from adbid.stages.pipeline import Pipeline
from adbid.v1 import bidder_pb2 as pb
from adbid.world import targeting
from adbid.world.creatives import BANNER, VIDEO, VideoCreative, attr_mask
from adbid.world.currency import ACCOUNT, Currencies

MAX_IMP_ID_CHARS = 64
ALPHA3 = {"USA": "US", "GBR": "GB", "DEU": "DE", "FRA": "FR", "ESP": "ES", "ITA": "IT",
          "NLD": "NL", "SWE": "SE", "POL": "PL", "CAN": "CA", "MEX": "MX", "BRA": "BR",
          "ARG": "AR", "JPN": "JP", "KOR": "KR", "IND": "IN", "IDN": "ID", "AUS": "AU",
          "ZAF": "ZA", "NGA": "NG", "EGY": "EG", "TUR": "TR", "SAU": "SA", "ARE": "AE",
          "CHN": "CN", "VNM": "VN", "THA": "TH", "PHL": "PH", "CHE": "CH", "AUT": "AT"}
# OpenRTB device types (AdCOM list) -> adbid.v1.DeviceType.
DEVICE = {1: pb.DEVICE_TYPE_MOBILE, 2: pb.DEVICE_TYPE_DESKTOP, 3: pb.DEVICE_TYPE_CTV,
          4: pb.DEVICE_TYPE_MOBILE, 5: pb.DEVICE_TYPE_TABLET, 7: pb.DEVICE_TYPE_CTV}
KNOWN_SIZES = set(targeting.SLOT_SIZES)
# Response ids: random per process, then a serial number (unique across restarts, since the
# ledger refuses a request id it has seen; a random number per request cost 12 µs here).
_PROCESS = os.urandom(6).hex()
_SERIAL = itertools.count(1)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Auction:
    """One request, mapped: the events to decide, and for every imp either its event's
    position or the reason it is not bid on."""

    request: BidRequest
    bidid: str
    currency: str | None  # the response currency; None = none adbid prices in
    batch: EventRows | None  # the imps to decide, None when there are none
    deals: dict[int, dict[int, tuple[str, int]]]  # imp -> campaign row -> (deal id, floor)
    private: set[int]  # imps in a private auction: only their deals may bid
    position: list[int]  # per imp: its event's position, or -1
    skipped: dict[int, str]  # imp index -> why it is not bid on
    sizes: list[tuple[int, int]]  # per imp: the size bid on


def _user_key(req: BidRequest) -> str:
    user, device, regs = req.user, req.device, req.regs
    if device is not None and device.lmt == 1:
        return ""
    gdpr = regs.gdpr if regs is not None and regs.gdpr is not None else (
        regs.ext.gdpr if regs is not None and regs.ext is not None else None)
    consent = (user.consent or (user.ext.consent if user.ext else None)) if user else None
    if gdpr == 1 and not consent:
        return ""
    if user is not None and (user.buyeruid or user.id):
        return user.buyeruid or user.id or ""
    ifa = device.ifa if device is not None else None
    if ifa and set(ifa) - {"0", "-"}:
        return ifa
    return ""


def _context(req: BidRequest) -> tuple[str, str]:
    """(context words, site domain or app bundle)."""
    if req.site is not None:
        s = req.site
        path = urlsplit(s.page).path if s.page else ""
        words = " ".join(filter(None, (s.keywords, path.replace("/", " "), *s.cat)))
        return " ".join(_WORD.findall(words.lower()))[:1000], s.domain or ""
    if req.app is not None:
        a = req.app
        words = " ".join(filter(None, (a.name, a.keywords, *a.cat)))
        return " ".join(_WORD.findall(words.lower()))[:1000], a.bundle or a.domain or ""
    return "", ""


def _size(imp: Imp) -> tuple[int, int]:
    banner = imp.banner
    if banner is None:
        return 0, 0
    listed = [(f.w, f.h) for f in banner.format]
    if banner.w and banner.h:
        listed.append((banner.w, banner.h))
    return next((s for s in listed if s in KNOWN_SIZES), listed[0] if listed else (0, 0))


def _floor(imp: Imp, currencies: Currencies) -> int:
    if not math.isfinite(imp.bidfloor) or imp.bidfloor < 0:
        raise BadRequest(f"imp {imp.id!r}: bidfloor must be a number >= 0")
    if not currencies.knows(imp.bidfloorcur):
        raise BadRequest(f"imp {imp.id!r}: bidfloorcur {imp.bidfloorcur!r} is not a "
                         f"currency adbid prices in ({', '.join(sorted(currencies.rates))})")
    return currencies.to_account_micros_up(imp.bidfloor, imp.bidfloorcur)


def _deals(imp: Imp, world_deals: dict, currencies: Currencies,
           seat: str) -> dict[int, tuple[str, int]]:
    """The imp's deals adbid sells, as campaign row -> (deal id, floor in account micros):
    the higher of the deal's own floor and the request's for it."""
    out: dict[int, tuple[str, int]] = {}
    for deal in imp.pmp.deals if imp.pmp is not None else ():
        known = world_deals.get(deal.id)
        if known is None or (deal.wseat and seat not in deal.wseat) or \
                (known[2] and seat not in known[2]):
            continue
        if not currencies.knows(deal.bidfloorcur) or not math.isfinite(deal.bidfloor) \
                or deal.bidfloor < 0:
            raise BadRequest(f"imp {imp.id!r}: deal {deal.id!r}: bidfloor and bidfloorcur "
                             "must be a number >= 0 and a currency adbid prices in")
        floor = max(known[1], currencies.to_account_micros_up(deal.bidfloor, deal.bidfloorcur))
        out[known[0]] = (deal.id, floor)
    return out


def map_request(req: BidRequest, currencies: Currencies, seat: str, max_imps: int,
                video: dict[int, VideoCreative] | None = None,
                world_deals: dict | None = None) -> Auction:
    """The request's imps as events; raises BadRequest for an invalid request. `video`:
    the world's video creatives by ad row; `world_deals`: its deals (CampaignTable.deals)."""
    video = video or {}
    deals = {k: d for k, imp in enumerate(req.imp)
             if (d := _deals(imp, world_deals or {}, currencies, seat))}
    if not req.id:
        raise BadRequest("id: empty")
    if not req.imp:
        raise BadRequest("imp: at least one impression is required")
    if len(req.imp) > max_imps:
        raise BadRequest(f"imp: {len(req.imp)} impressions, at most {max_imps}")
    ids = [imp.id for imp in req.imp]
    if len(set(ids)) != len(ids) or "" in ids or max(map(len, ids)) > MAX_IMP_ID_CHARS:
        raise BadRequest(f"imp.id: ids must be unique, non-empty and at most "
                         f"{MAX_IMP_ID_CHARS} characters")
    floors = [_floor(imp, currencies) for imp in req.imp]
    offered = [c.upper() for c in req.cur] or [ACCOUNT]
    currency = next((c for c in offered if currencies.knows(c)), None)
    bidid = f"{_PROCESS}{next(_SERIAL):x}"
    skipped: dict[int, str] = {}
    formats: list[int] = []
    fitting: list[frozenset[int] | None] = []
    for k, imp in enumerate(req.imp):
        # Our banners are XHTML banner ads (btype 2): a slot that blocks those takes none.
        fmt = BANNER if imp.banner is not None and 2 not in imp.banner.btype else 0
        fits = None
        if imp.video is not None:
            v = imp.video
            fits = frozenset(row for row, c in video.items()
                             if c.fits(v.mimes, v.minduration, v.maxduration, v.protocols))
            fmt |= VIDEO if fits else 0
        formats.append(fmt)
        fitting.append(fits)
        if not fmt:
            skipped[k] = "video: no creative fits" if imp.video is not None else \
                "native" if imp.native is not None else "no banner or video"
        elif imp.pmp is not None and imp.pmp.private_auction == 1 and k not in deals:
            skipped[k] = "private auction: no deal adbid sells"
    if (req.wseat and seat not in req.wseat) or seat in req.bseat:
        skipped.update(dict.fromkeys(range(len(req.imp)), "seat"))
    live = [k for k in range(len(req.imp)) if k not in skipped]
    sizes = [_size(imp) for imp in req.imp]
    position = [-1] * len(req.imp)
    for i, k in enumerate(live):
        position[k] = i
    private = {k for k, imp in enumerate(req.imp)
               if imp.pmp is not None and imp.pmp.private_auction == 1}
    if currency is None or not live:
        return Auction(req, bidid, currency, None, deals, private, position, skipped, sizes)
    for k in private & set(live):  # the lowest of its deals' floors; each checked after
        floors[k] = min(floor for _, floor in deals[k].values())
    user = _user_key(req)
    context, site = _context(req)
    device = req.device
    country = ALPHA3.get((device.geo.country or "").upper(), "") \
        if device is not None and device.geo is not None else ""
    dtype = DEVICE.get(device.devicetype or 0, 0) if device is not None else 0
    n = len(live)
    auction = pb.AUCTION_TYPE_FIRST_PRICE if req.at == 1 else pb.AUCTION_TYPE_SECOND_PRICE
    batch = EventRows(
        [f"{bidid}/{req.imp[k].id}" for k in live], [user] * n, [context] * n,
        [floors[k] for k in live], [dtype] * n, [auction] * n, [sizes[k][0] for k in live],
        [sizes[k][1] for k in live], [country] * n, [1 if req.test == 1 else 0] * n,
        [site] * n, [list(req.badv)] * n, [list(req.bcat)] * n,
        [formats[k] for k in live], [fitting[k] for k in live],
        [frozenset(deals[k]) if k in private else None for k in live],
        [max(0, req.imp[k].exp or 0) * 1000 for k in live],
        [attr_mask(b.battr) if (b := req.imp[k].banner) is not None else 0 for k in live])
    return Auction(req, bidid, currency, batch, deals, private, position, skipped, sizes)


def settle_deals(auction: Auction, dec: Decisions) -> tuple[dict[int, str], list[int]]:
    """After the decision: (imp -> deal id for bids made in a deal, positions of bids to
    withdraw: a private auction's bid below its deal's floor)."""
    dealids: dict[int, str] = {}
    dropped: list[int] = []
    for k, offered in auction.deals.items():
        i = auction.position[k]
        if i < 0 or not dec.bid[i]:
            continue
        deal = offered.get(int(dec.campaign_row[i]))
        if deal is not None and int(dec.price_cpm_micros[i]) >= deal[1]:
            dealids[k] = deal[0]
        elif k in auction.private:
            dropped.append(i)
    return dealids, dropped


class NoticeSigner:
    """Signs what a notice URL carries literally (the ledger's request id, the bid in
    account micros, the test flag, the bid's currency), so that a tampered or made-up
    notice is refused."""

    def __init__(self, key: bytes, worker: int | None = None) -> None:
        self.key = key
        self.worker = worker  # under --workers: the worker that signs, named in its URLs

    def sign(self, rid: str, bid_micros: int, test: int, currency: str) -> str:
        message = f"{rid}|{bid_micros}|{test}|{currency}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def valid(self, rid: str, bid_micros: int, test: int, currency: str,
              signature: str) -> bool:
        return hmac.compare_digest(self.sign(rid, bid_micros, test, currency), signature)


def notice_urls(base: str, signer: NoticeSigner, rid: str, bid_micros: int,
                test: int, currency: str) -> dict[str, str]:
    """nurl, burl and lurl for one bid, with the OpenRTB 2.6 macros placed as §4.4 says:
    the clearing price on win and billing, the loss reason and minimum to win on loss."""
    fixed = (f"r={quote(rid, safe='')}&b={bid_micros}&t={test}&k={currency}"
             f"&s={signer.sign(rid, bid_micros, test, currency)}"
             "&a=${AUCTION_ID}&i=${AUCTION_IMP_ID}&x=${AUCTION_BID_ID}"
             + (f"&w={signer.worker}" if signer.worker is not None else ""))
    price = "&p=${AUCTION_PRICE}&c=${AUCTION_CURRENCY}"
    return {"nurl": f"{base}/openrtb2/notice/win?{fixed}{price}",
            "burl": f"{base}/openrtb2/notice/bill?{fixed}{price}",
            "lurl": f"{base}/openrtb2/notice/loss?{fixed}&c=${{AUCTION_CURRENCY}}"
                    "&l=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}"}


def _vast(crid: str, adomain: str, creative: VideoCreative, mime: str, w: int, h: int,
          pixel: str) -> str:
    """A VAST 3.0 inline ad: the billing URL as its impression."""
    ext = mime.rsplit("/", 1)[-1]
    return (f'<VAST version="3.0"><Ad id="{crid}"><InLine><AdSystem>adbid</AdSystem>'
            f"<AdTitle>{crid}</AdTitle><Impression><![CDATA[{pixel}]]></Impression>"
            f"<Creatives><Creative><Linear><Duration>00:00:{creative.duration_s:02d}"
            f'</Duration><MediaFiles><MediaFile delivery="progressive" type="{mime}" '
            f'width="{w}" height="{h}"><![CDATA[https://cdn.{adomain}/{crid}.{ext}]]>'
            "</MediaFile></MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>")


def _markup(crid: str, adomain: str, w: int, h: int, pixel: str) -> str:
    return (f'<a href="https://{adomain}/?crid={crid}" target="_blank">'
            f'<img src="https://cdn.{adomain}/{crid}/{w}x{h}.png" width="{w}" height="{h}" '
            f'alt=""></a><img src="{pixel}" width="1" height="1" alt="" style="display:none">')


def build_response(auction: Auction, dec: Decisions, pipeline: Pipeline,
                   currencies: Currencies, seat: str, base: str,
                   signer: NoticeSigner, dealids: dict[int, str] | None = None) -> dict | None:
    """The BidResponse for the decided imps, or None when nothing is bid."""
    req, cur = auction.request, auction.currency
    if cur is None or auction.batch is None:
        return None
    records = pipeline.world.campaigns.records
    bids = []
    for k, imp in enumerate(req.imp):
        i = auction.position[k]
        if i < 0 or not dec.bid[i]:
            continue
        campaign = int(dec.campaign_row[i])
        crid = pipeline.creative_ids[int(dec.ad_row[i])]
        record = records[campaign]
        adomain = str(record.get("advertiser_domain") or "adbid.example")
        micros = int(dec.price_cpm_micros[i])
        rid = auction.batch.request_id[i]
        test = int(auction.batch.is_test[i])
        urls = notice_urls(base, signer, rid, micros, test, cur)
        w, h = auction.sizes[k]
        video = pipeline.world.video.get(int(dec.ad_row[i]))
        if video is not None and imp.video is not None:
            w, h = imp.video.w or video.w, imp.video.h or video.h
            mime = next((m for m in video.mimes if not imp.video.mimes
                         or m in imp.video.mimes), video.mimes[0])
            adm, mtype = _vast(crid, adomain, video, mime, w, h, urls["burl"]), 2
        else:
            adm, mtype = _markup(crid, adomain, w, h, urls["burl"]), 1
        bids.append({
            "id": f"{auction.bidid}-{k}", "impid": imp.id,
            "price": currencies.from_account_micros_up(micros, cur),
            "adid": crid, "crid": crid, "cid": pipeline.campaign_ids[campaign],
            "adomain": [adomain], "cat": list(record.get("categories") or []),
            "w": w, "h": h, "mtype": mtype, "adm": adm, **urls,
            **({"dealid": dealids[k]} if dealids and k in dealids else {})})
    if not bids:
        return None
    return {"id": req.id, "bidid": auction.bidid, "cur": cur,
            "seatbid": [{"seat": seat, "bid": bids}]}
