"""A world: the versioned directory of artifacts adbid serves.

Layout (all arrays are .npy, loaded with allow_pickle=False; nothing is pickled):

    manifest.json          format, version, seed, sizes, model AUCs, sha256 of every file
    model.onnx             intent model (signature in adbid.stages.scoring)
    ads.faiss              FAISS index over ad embeddings (row = ad)
    ad_campaign.npy        int32[A]   campaign row of each ad
    ad_creative_ids.npy    <U[A]      creative id of each ad
    user_ids.npy           <U[U]      user ids, row = embedding row
    user_embeddings.npy    float32[U, D] (or float16: half the memory; served as float32)
    topic_embeddings.npy   float32[T, D] context topics
    context_words.json     {word: topic row}
    campaigns.json         campaign records (see adbid.world.campaigns)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from adbid.world import creatives, currency
from adbid.world.campaigns import CampaignTable
from adbid.world.currency import Currencies, CurrencyError

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
INDEX = "ads.faiss"
ARRAYS = ("ad_campaign", "ad_creative_ids", "user_ids", "user_embeddings", "topic_embeddings")
JSONS = ("context_words", "campaigns")
FILES = (MODEL, INDEX, *(f"{a}.npy" for a in ARRAYS), *(f"{j}.json" for j in JSONS))
OPTIONAL = (creatives.FILE, currency.FILE)  # checksummed when present


# Parts of a world that a reload takes over unchanged from the running one when all of
# their files have the same checksums: no reading, no rebuilding of their tables.
SHARED = {"users": ("user_ids.npy", "user_embeddings.npy"), "index": (INDEX,),
          "contexts": ("topic_embeddings.npy", "context_words.json"), "model": (MODEL, INDEX)}


class WorldError(ValueError):
    """A world directory is missing, incomplete or inconsistent."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Checksum every world file in `path` and write manifest.json; returns the manifest.

    The version is derived from the checksums, so equal content has an equal version.
    """
    files = {name: {"sha256": sha256_of(path / name), "bytes": (path / name).stat().st_size}
             for name in (*FILES, *(o for o in OPTIONAL if (path / o).is_file()))}
    digest = hashlib.sha256("".join(str(f["sha256"]) for f in files.values())
                            .encode()).hexdigest()
    manifest = {"format": FORMAT, **info, "version": f"{info.get('name', 'world')}-{digest[:12]}",
                "files": files}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class World:
    """A loaded world. Arrays are read-only; budgets and spend live in the ledger."""

    path: Path
    manifest: dict[str, Any]
    user_ids: np.ndarray  # <U[U]
    user_embeddings: np.ndarray  # float32 or float16 [U, D]
    ad_index: faiss.Index  # ntotal = A, dimension D
    ad_campaign: np.ndarray  # int32[A]
    ad_creative_ids: np.ndarray  # <U[A]
    topic_embeddings: np.ndarray  # float32[T, D]
    context_words: dict[str, int]  # word -> topic row
    campaigns: CampaignTable
    currencies: Currencies = field(default_factory=Currencies)
    ad_format: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # uint8[A]
    video: dict[int, creatives.VideoCreative] = field(default_factory=dict)  # ad row -> video
    ad_attrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # uint64[A]
    # The parts taken over from the world loaded before, their files being the same (see
    # SHARED): the model may be, when MODEL and INDEX are.
    shared: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def dim(self) -> int:
        return int(self.user_embeddings.shape[1])

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @classmethod
    def load(cls, path: str | Path, verify_checksums: bool = True,
             previous: World | None = None) -> World:
        """Load and cross-check a world directory; raises WorldError saying what is wrong.
        `previous`: the world serving now; parts whose files are unchanged (SHARED) are
        taken over from it instead of being read and built again."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise WorldError(f"{path}: no {MANIFEST}; build one with "
                             f"`adbid demo-world --out {path}`")
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise WorldError(f"{path}: world format {manifest.get('format')!r}, expected {FORMAT}")
        listed = manifest.get("files", {})
        same = () if previous is None else tuple(
            part for part, names in SHARED.items()
            if all(listed.get(n, {}).get("sha256") is not None and listed.get(n, {}).get(
                "sha256") == previous.manifest.get("files", {}).get(n, {}).get("sha256")
                for n in names))
        # Files of parts taken over are not read: what serves them is the running world's,
        # verified when it was loaded, with the same checksums. They are checked by size
        # (a truncated copy is refused), not hashed again.
        unread = {n for part in same for n in SHARED[part]} - (
            set() if "model" in same else {MODEL}) - (set() if "index" in same else {INDEX})
        for name in (*FILES, *(o for o in OPTIONAL if o in listed)):
            f = path / name
            if not f.is_file():
                raise WorldError(f"{path}: missing {name}")
            if not verify_checksums:
                continue
            if name in unread:
                if f.stat().st_size != listed.get(name, {}).get("bytes"):
                    raise WorldError(f"{path}: {name} does not match its manifest checksum "
                                     "(its size differs)")
            elif listed.get(name, {}).get("sha256") != sha256_of(f):
                raise WorldError(f"{path}: {name} does not match its manifest checksum")
        arrays = {a: np.load(path / f"{a}.npy", allow_pickle=False) for a in ARRAYS
                  if f"{a}.npy" not in unread}
        jsons = {j: json.loads((path / f"{j}.json").read_text()) for j in JSONS
                 if f"{j}.json" not in unread}
        try:
            campaigns = CampaignTable.from_records(jsons["campaigns"])
        except ValueError as exc:
            raise WorldError(f"{path}/campaigns.json: {exc}") from None
        index = previous.ad_index if previous is not None and "index" in same else \
            faiss.read_index(str(path / INDEX))
        try:
            currencies = Currencies.load(path)
            ad_format, video, ad_attrs = creatives.load(path, arrays["ad_creative_ids"])
        except (CurrencyError, ValueError) as exc:
            raise WorldError(f"{path}: {exc}") from None
        if previous is not None and "users" in same:
            user_ids, user_embeddings = previous.user_ids, previous.user_embeddings
        else:
            user_ids = arrays["user_ids"]  # the id -> row table: adbid.stages.lookup
            stored = arrays["user_embeddings"]
            user_embeddings = np.ascontiguousarray(
                stored, dtype=np.float16 if stored.dtype == np.float16 else np.float32)
        if previous is not None and "contexts" in same:
            topics, words = previous.topic_embeddings, previous.context_words
        else:
            topics = np.ascontiguousarray(arrays["topic_embeddings"], dtype=np.float32)
            words = {str(k): int(v) for k, v in jsons["context_words"].items()}
        world = cls(
            path=path,
            manifest=manifest,
            user_ids=user_ids,
            user_embeddings=user_embeddings,
            ad_index=index,
            ad_campaign=np.ascontiguousarray(arrays["ad_campaign"], dtype=np.int32),
            ad_creative_ids=arrays["ad_creative_ids"],
            topic_embeddings=topics,
            context_words=words,
            campaigns=campaigns,
            currencies=currencies,
            ad_format=ad_format,
            video=video,
            ad_attrs=ad_attrs,
            shared=same,
        )
        world._check_consistency()
        log.info("loaded world %s from %s: %d users, %d ads, %d campaigns, d=%d%s",
                 world.version, path, len(world.user_ids), index.ntotal, len(campaigns),
                 world.dim, f" (unchanged, taken over: {', '.join(same)})" if same else "")
        return world

    def _check_consistency(self) -> None:
        d, n_ads = self.dim, self.ad_index.ntotal
        problems = []
        if self.user_embeddings.ndim != 2 or len(self.user_ids) != len(self.user_embeddings):
            problems.append("user_ids and user_embeddings differ in length")
        if self.ad_index.d != d:
            problems.append(f"index dimension {self.ad_index.d} != user embedding dimension {d}")
        if self.topic_embeddings.shape[1:] != (d,):
            problems.append(f"topic embeddings are not {d}-d")
        if len(self.ad_campaign) != n_ads or len(self.ad_creative_ids) != n_ads:
            problems.append(f"ad table has {len(self.ad_campaign)} rows, index has {n_ads} ads")
        if len(self.ad_campaign) and not (self.ad_campaign.min() >= 0
                                          and self.ad_campaign.max() < len(self.campaigns)):
            problems.append("ad_campaign points outside the campaign table")
        bad_words = [w for w, t in self.context_words.items()
                     if not 0 <= t < len(self.topic_embeddings)]
        if bad_words:
            problems.append(f"context words point outside the topic table: {bad_words[:5]}")
        if problems:
            raise WorldError(f"{self.path}: " + "; ".join(problems))
