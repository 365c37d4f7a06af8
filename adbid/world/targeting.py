"""Targeting vocabularies: country, device and slot size to bit indices.

The decision core evaluates targeting as one 64-bit mask per campaign and
dimension, tested against the event's bit index. Bit 63 is "unknown": it is set
only in masks of campaigns that do not restrict that dimension, so an event
with an unknown country never passes a country-targeted campaign.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

import numpy as np

UNKNOWN_BIT = 63
ALL_BITS = (1 << 64) - 1

COUNTRIES: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "PL", "CA", "MX", "BR", "AR", "JP", "KR",
    "IN", "ID", "AU", "ZA", "NG", "EG", "TR", "SA", "AE", "CN", "VN", "TH", "PH", "CH", "AT",
)  # fmt: skip
COUNTRY_BIT: dict[str, int] = {c: i for i, c in enumerate(COUNTRIES)}

# adbid.v1.DeviceType values are their own bit indices (0 = unspecified .. 4 = CTV).
DEVICE_TYPES: tuple[int, ...] = (0, 1, 2, 3, 4)

# IAB standard sizes, (width_px, height_px).
SLOT_SIZES: tuple[tuple[int, int], ...] = (
    (300, 250), (728, 90), (320, 50), (160, 600), (300, 600),
    (970, 250), (320, 100), (468, 60), (336, 280), (250, 250),
)  # fmt: skip

MAX_SLOT_PX = 4096
_SIZE_KEYS = np.array([w * (MAX_SLOT_PX + 1) + h for w, h in SLOT_SIZES], dtype=np.int64)
_SIZE_ORDER = np.argsort(_SIZE_KEYS)
_SIZE_SORTED = _SIZE_KEYS[_SIZE_ORDER]


def country_bits(codes: Iterable[str]) -> np.ndarray:
    """ISO alpha-2 codes -> int32 bit indices; unknown or empty -> UNKNOWN_BIT."""
    codes = list(codes)  # map() over dict.get keeps the per-event loop in C
    return np.fromiter(map(COUNTRY_BIT.get, codes, itertools.repeat(UNKNOWN_BIT)),
                       dtype=np.int32, count=len(codes))


def size_bits(width_px: np.ndarray, height_px: np.ndarray) -> np.ndarray:
    """Slot sizes (int arrays of equal length, px) -> int32 bit indices; unlisted -> UNKNOWN_BIT."""
    keys = width_px.astype(np.int64) * (MAX_SLOT_PX + 1) + height_px.astype(np.int64)
    pos = np.searchsorted(_SIZE_SORTED, keys).clip(0, len(_SIZE_SORTED) - 1)
    hit = _SIZE_SORTED[pos] == keys
    return np.where(hit, _SIZE_ORDER[pos], UNKNOWN_BIT).astype(np.int32)


def device_bits(device_types: np.ndarray) -> np.ndarray:
    """adbid.v1.DeviceType values -> int32 bit indices; out of range -> UNKNOWN_BIT."""
    d = np.asarray(device_types, dtype=np.int64)
    return np.where((d >= 0) & (d < len(DEVICE_TYPES)), d, UNKNOWN_BIT).astype(np.int32)


def mask_of(bits: Iterable[int]) -> int:
    """Bit indices -> a 64-bit mask; an empty list means "no restriction" (all bits)."""
    bits = list(bits)
    if not bits:
        return ALL_BITS
    m = 0
    for b in bits:
        if not 0 <= b < UNKNOWN_BIT:
            raise ValueError(f"targeting bit {b} out of range 0..{UNKNOWN_BIT - 1}")
        m |= 1 << b
    return m


def country_mask(codes: Iterable[str]) -> int:
    codes = list(codes)
    unknown = [c for c in codes if c not in COUNTRY_BIT]
    if unknown:
        raise ValueError(f"unknown country codes {unknown}; known: {', '.join(COUNTRIES)}")
    return mask_of(COUNTRY_BIT[c] for c in codes)


def device_mask(device_types: Iterable[int]) -> int:
    return mask_of(device_types)


def size_mask(sizes: Iterable[str]) -> int:
    """Sizes as "WxH" strings -> mask."""
    bits = []
    for s in sizes:
        try:
            w, h = (int(x) for x in s.lower().split("x"))
            bits.append(SLOT_SIZES.index((w, h)))
        except ValueError as exc:
            known = ", ".join(f"{w}x{h}" for w, h in SLOT_SIZES)
            raise ValueError(f"unknown slot size {s!r}; known: {known}") from exc
    return mask_of(bits)


# IAB content taxonomy 1.0: tier 1 "IAB1" .. "IAB26" -> bits 0..25, subcategories
# "IAB7-39" under their tier-1 parent. Blocks match at the level given: a tier-1 block
# (bcat "IAB7") blocks the category and every subcategory of it; a subcategory block
# ("IAB7-39") blocks only campaigns that carry that subcategory.
N_IAB_TIER1 = 26


def category_bit(code: str) -> int | None:
    """"IAB7" or "IAB7-39" -> 6 (the tier-1 bit); anything else -> None. Codes repeat
    across events, so short ones are cached; a long string is no IAB code."""
    return _parsed(code)[0] if len(code) <= 32 else None


def subcategory_code(code: str) -> str | None:
    """"IAB7-39" -> "IAB7-39" (normalised); a tier-1 code or anything else -> None."""
    return _parsed(code)[1] if len(code) <= 32 else None


@functools.lru_cache(maxsize=4096)
def _parsed(code: str) -> tuple[int | None, str | None]:
    head, _, tail = code.strip().upper().partition("-")
    if not head.startswith("IAB") or not head[3:].isdigit():
        return None, None
    n = int(head[3:])
    if not 1 <= n <= N_IAB_TIER1:
        return None, None
    if not tail:
        return n - 1, None
    return (n - 1, f"IAB{n}-{int(tail)}") if tail.isdigit() else (None, None)


def category_mask(codes) -> int:
    """A campaign's IAB codes -> mask of their tier-1 bits (a subcategory's parent too);
    unknown codes are ignored (0 if none)."""
    m = 0
    for code in codes:
        if (b := category_bit(code)) is not None:
            m |= 1 << b
    return m


def category_masks(codes, counts: np.ndarray) -> np.ndarray:
    """Per-event masks of blocked tier-1 categories (uint64[B]) from a flat list of IAB
    codes, event i owning the next counts[i]. Only tier-1 codes count here (subcategory
    blocks are matched by id); unknown codes are ignored."""
    masks = np.zeros(len(counts), dtype=np.uint64)
    if not len(codes):
        return masks
    entry = np.fromiter(map(_tier1_entry, codes), dtype=np.uint64, count=len(codes))
    owners = np.flatnonzero(counts)
    # reduceat ORs entry[starts[j]:starts[j + 1]]: the empty events in between own nothing.
    masks[owners] = np.bitwise_or.reduceat(entry, (np.cumsum(counts) - counts)[owners])
    return masks


def _tier1_entry(code: str) -> int:
    """One block code's mask bit: 0 for a subcategory or anything but an IAB code."""
    if len(code) > 32:
        return 0
    b, sub = _parsed(code)
    return 0 if b is None or sub is not None else 1 << b


def subcategory_ids(codes, counts: np.ndarray,
                    known: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-event blocked subcategories as a CSR of ids in `known` (the campaigns'
    subcategories); codes no campaign carries drop out. (ptr int32[B + 1], ids int32[...])."""
    n = len(counts)
    ptr = np.zeros(n + 1, dtype=np.int32)
    if not len(codes) or not known:
        return ptr, np.zeros(0, dtype=np.int32)
    ids = np.fromiter((known.get(subcategory_code(c) or "", -1) for c in codes),
                      dtype=np.int32, count=len(codes))
    owner = np.repeat(np.arange(n), counts)
    keep = ids >= 0
    np.cumsum(np.bincount(owner[keep], minlength=n), out=ptr[1:])
    return ptr, ids[keep]


def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> (ptr int32[len + 1], ids int32[...]): row r is ids[ptr[r]:ptr[r + 1]]."""
    ptr = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int32, count=len(lists)), out=ptr[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(ptr[-1]))
    return ptr, ids
