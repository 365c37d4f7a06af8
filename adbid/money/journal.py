"""The spend ledger's durable store: an append-only log with group commit.

Measured against SQLite in WAL mode on the ledger's own write pattern with
random request ids (benchmarks/bench_ledger_store.py, 2 shared cores): 0.9 ms
per batch of 256 bids and 150 notices (1.5 ms with fdatasync) against 12-13 ms
for SQLite, whose B-tree inserts on random keys dominate. The log replays
slower (about 7 us a record, in Python), so segments are compacted at 64 MiB,
which bounds start-up replay to a few seconds.

Files, in one directory:

    segment-000001.log, segment-000002.log, ...   replayed in order at start-up

Records and their binary form: adbid.money.records.

Durability (`sync`): "write" (the default) hands each group to the OS before
acknowledging, which survives the process being killed (kill -9); "fsync"
also fdatasyncs each group, which survives power loss, at 5-12 ms a commit on
this project's test machines: more than a whole bidding deadline. Writes from
concurrent batches that queue up while a group is written go out together
(group commit). In "write" mode, an append that finds the writer thread idle is
written at once on the appending thread instead: an os.write to the page cache
takes microseconds, while the hand-off to the writer and back takes a thread
wake-up each way, which on an idle VM cost 0.5 ms at p50 and 6 ms at p99.

Compaction: when the newest segment passes `segment_bytes`, the ledger writes
its whole state (campaign overrides, spend, open reservations, recent closed
ids) as a new segment, and the older segments are deleted. The snapshot is
written on a thread of its own while appends go on to the current segment;
the writer then copies what was appended meanwhile behind it and switches.
(Written by the writer thread itself, a 65 MiB snapshot held every append,
and so every bid, for 5.5 s.)
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

from adbid.money.records import (
    _HEAD,
    CAMPAIGN,
    IN_DOUBT,
    RESERVE_BATCH,
    SETTLED,
    CampaignChange,
    Close,
    Reserve,
    ReserveBatch,
    Spent,
    read_record,
)

log = logging.getLogger(__name__)

SYNC_MODES = ("write", "fsync")


def _starts_with_snapshot(seg: Path) -> bool:
    """Whether a segment's first record is a compaction's (a CAMPAIGN change "snapshot")."""
    with seg.open("rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return False
        length, crc = _HEAD.unpack(head)
        payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload) != crc or payload[0] != CAMPAIGN:
        return False
    return read_record(payload).change == "snapshot"


class LedgerLog:
    """Segments on disk plus one writer thread that group-commits appends."""

    def __init__(self, directory: Path, sync: str = "write",
                 segment_bytes: int = 64 << 20) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"ledger sync must be one of {SYNC_MODES}, got {sync!r}")
        self.path = Path(directory)
        self.path.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        self.segment_bytes = segment_bytes
        # Size of the segment a compaction last wrote, and whether one is queued. A snapshot
        # of many open reservations can itself pass segment_bytes; compacting again before
        # the log has grown past twice the snapshot would rewrite it back to back forever.
        self.compacted_bytes = 0
        self.compacting = False
        self._fd: int | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Items handed to the writer thread (written by the appending thread only) and
        # items it has finished (by the writer only): equal when it is idle.
        self._queued = 0
        self._finished = 0
        self._counting = threading.Lock()  # guards _queued and the queue's order
        self._io = threading.Lock()  # held while writing: by the writer, or an append at once
        self._compaction: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------

    def segments(self) -> list[Path]:
        return sorted(self.path.glob("segment-*.log"))

    def live_segments(self) -> list[Path]:
        """The segments that make up the books: from the newest one that begins with a
        compaction's snapshot. A compaction cut off after putting its snapshot in place and
        before deleting the older segments leaves them behind; replaying them as well
        would count their spend twice."""
        segs = self.segments()
        for i in range(len(segs) - 1, 0, -1):
            if _starts_with_snapshot(segs[i]):
                return segs[i:]
        return segs

    def replay(self) -> Iterator:
        """Every record in order; a torn or corrupt tail is reported and cut off."""
        for seg in self.live_segments():
            data = seg.read_bytes()
            off = 0
            while off < len(data):
                if off + _HEAD.size > len(data):
                    break
                length, crc = _HEAD.unpack_from(data, off)
                payload = data[off + _HEAD.size:off + _HEAD.size + length]
                if len(payload) != length or zlib.crc32(payload) != crc:
                    break
                if payload[0] == RESERVE_BATCH:
                    yield from ReserveBatch.expand(payload)
                else:
                    yield read_record(payload)
                off += _HEAD.size + length
            if off < len(data):
                log.warning("ledger %s: %d bytes of torn or corrupt tail cut off at %d",
                            seg, len(data) - off, off)
                with seg.open("r+b") as f:
                    f.truncate(off)

    # -- writing ------------------------------------------------------------------

    def open(self) -> None:
        """Start appending (after replay): to the newest segment, or a first one. Segments
        older than the newest snapshot (a compaction cut off) are deleted now."""
        live = self.live_segments()
        for seg in self.segments():
            if seg not in live:
                log.warning("ledger %s: left behind by a compaction cut off before it "
                            "removed it; the snapshot in %s replaces it, deleting", seg.name,
                            live[0].name)
                seg.unlink()
        segs = live
        target = segs[-1] if segs else self.path / "segment-000001.log"
        self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment = target
        self._thread = threading.Thread(target=self._run, name="adbid-ledger", daemon=True)
        self._thread.start()

    def append(self, records: list) -> Future:
        """Queue records; the future completes once they are durable. Call from one thread.

        In "write" mode, when nothing is queued or being written, the records are written
        here and now (the future is done on return): order on disk stays the order of
        appends, since everything handed to the writer before is already written."""
        fut: Future = Future()
        if self.sync == "write" and self._fd is not None and self._io.acquire(blocking=False):
            try:
                if self._finished == self._queued:  # checked under the lock the writer holds
                    try:
                        self._write(b"".join([rec.encode() for rec in records]))
                    except BaseException as exc:
                        log.exception("ledger write failed")
                        fut.set_exception(exc)
                    else:
                        fut.set_result(None)
                    return fut
            finally:
                self._io.release()
        self._enqueue(("append", records, fut))
        return fut

    def _enqueue(self, item: tuple) -> None:
        with self._counting:  # the appending thread and a compaction's thread both enqueue
            self._queued += 1
            self._queue.put(item)

    def needs_compaction(self) -> bool:
        """The segment has passed segment_bytes and twice what the last compaction wrote,
        and no compaction is under way: each compaction then writes at most as much as was
        appended since the one before."""
        return not self.compacting and self.segment_size() >= max(self.segment_bytes,
                                                                  2 * self.compacted_bytes)

    def compact(self, snapshot) -> Future:
        """Start a compaction: the `snapshot` records (an iterable) become a new segment, and
        the older segments are deleted. Call when everything appended so far is written: the
        snapshot stands for exactly that much of the current segment.

        The snapshot is written and synced on a thread of its own, while appends go on to
        the current segment (with many open reservations a snapshot is tens of MiB and
        seconds of work, and bids wait for their appends). Then the writer thread copies
        what was appended meanwhile behind the snapshot and switches to it."""
        self.compacting = True
        fut: Future = Future()
        mark = self.segment_size()
        self._compaction = threading.Thread(target=self._write_snapshot,
                                            args=(snapshot, mark, fut),
                                            name="adbid-ledger-compaction", daemon=True)
        self._compaction.start()
        return fut

    def _write_snapshot(self, snapshot, mark: int, fut: Future) -> None:
        old = self.segments()
        number = int(old[-1].stem.split("-")[1]) + 1 if old else 1
        target = self.path / f"segment-{number:06d}.log"
        tmp = target.with_suffix(".tmp")
        written = 0
        try:
            with tmp.open("wb") as f:
                for rec in snapshot:
                    f.write(rec.encode())
                    written += 1
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:
            log.exception("ledger compaction failed writing %s", tmp.name)
            tmp.unlink(missing_ok=True)
            self.compacting = False  # a later one may try again
            fut.set_exception(exc)
            return
        self._enqueue(("switch", (tmp, target, old, mark, written), fut))

    def segment_size(self) -> int:
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def _run(self) -> None:
        """The writer thread: never dies of a waiter's fate (a cancelled call, say)."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while True:  # group commit: everything queued meanwhile goes in the same write
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
            try:
                with self._io:
                    self._commit(group)
            except BaseException as exc:
                log.exception("ledger write failed")
                self._finished += len(group)
                for _, _, fut in group:
                    if fut.set_running_or_notify_cancel():
                        fut.set_exception(exc)
            else:
                self._finished += len(group)
                for _, _, fut in group:
                    # A waiter that gave up (its call was cancelled) is skipped; the
                    # records are written all the same.
                    if fut.set_running_or_notify_cancel():
                        fut.set_result(None)

    def _commit(self, group: list) -> None:
        data = bytearray()
        for kind, records, _ in group:
            if kind == "switch":  # what came before it goes to the old segment first
                self._write(bytes(data))
                data.clear()
                try:
                    self._switch(*records)
                except BaseException:
                    self.compacting = False  # a later one may try again
                    raise
            else:
                for rec in records:
                    data += rec.encode()
        self._write(bytes(data))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        fd = self._fd
        assert fd is not None, "the log is not open"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if self.sync == "fsync":
            os.fdatasync(fd)

    def _switch(self, tmp: Path, target: Path, old: list[Path], mark: int, written: int) -> None:
        """On the writer thread: the snapshot in `tmp` covers the current segment up to
        `mark`; what was appended after it is copied behind the snapshot, which then
        replaces every older segment."""
        try:
            with open(self._segment, "rb") as src, tmp.open("ab") as dst:
                src.seek(mark)
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        self._segment = target
        for seg in old:
            seg.unlink()
        self.compacted_bytes = os.fstat(self._fd).st_size
        self.compacting = False
        log.info("ledger compacted into %s (%d records, %.1f MiB); removed %d older segments",
                 target.name, written, self.compacted_bytes / 2**20, len(old))

    def close(self) -> None:
        if self._compaction is not None:  # its switch must still reach the writer
            self._compaction.join()
            self._compaction = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def totals(directory: Path) -> dict[str, dict[str, int]]:
    """Per campaign, from the records alone: committed spend and open reservations.

    Independent of the ledger's in-memory books: tests compare the two.
    """
    reserved: dict[str, tuple[str, int]] = {}
    spent: dict[str, int] = {}
    for rec in LedgerLog(directory).replay():
        if isinstance(rec, Reserve):
            reserved[rec.request_id] = (rec.campaign_id, rec.cost_micros)
        elif isinstance(rec, Close):
            if rec.state != IN_DOUBT:  # in doubt: still reserved
                reserved.pop(rec.request_id, None)
            if rec.state in SETTLED:
                spent[rec.campaign_id] = spent.get(rec.campaign_id, 0) + rec.settled_cost_micros
        elif isinstance(rec, Spent):
            spent[rec.campaign_id] = spent.get(rec.campaign_id, 0) + rec.spent_micros
    out: dict[str, dict[str, int]] = {}
    for cid, s in spent.items():
        out.setdefault(cid, {"spent": 0, "reserved": 0})["spent"] = s
    for cid, cost in reserved.values():
        out.setdefault(cid, {"spent": 0, "reserved": 0})["reserved"] += cost
    return out


def open_log(path: Path | None, sync: str = "write") -> LedgerLog | None:
    """The log in `path`, or None (books in memory only) when no path is given."""
    return None if path is None else LedgerLog(path, sync)


def snapshot(ids, budget: list[int], active: list[int], spent: list[int], open_: dict,
             closed: list, t: int, doubt: dict | None = None, window_ms: int = 0) -> Iterator:
    """The records of a compaction: every campaign's budget, state and spend, the open and
    in-doubt reservations and the recently closed ids, as of `t`."""
    for c, cid in enumerate(ids):
        yield CampaignChange(cid, budget[c], bool(active[c]), "snapshot", "compaction", t)
        if spent[c]:
            yield Spent(cid, spent[c])
    # Open reservations as packed batches, one per expiry instant (a batch of bids shares
    # it): encoding one record each took ~5 s per million, GIL held.
    by_expiry: dict[int, list] = {}
    for table in (open_, doubt or {}):
        for rid, (row, price, cost, expires, user, *_) in table.items():  # answers not kept
            by_expiry.setdefault(expires, []).append((rid, ids[row], user, price, cost))
    for expires, group in by_expiry.items():
        rids, cids, users, prices, costs = zip(*group)
        yield ReserveBatch(list(rids), list(cids), list(users), list(prices), list(costs), t,
                           expires)
    for rid, (row, price, _, until, _) in (doubt or {}).items():  # in doubt since until - window
        yield Close(rid, IN_DOUBT, None, 0, until - window_ms, ids[row], price)
    for rid, (state, row, price, clearing) in closed:  # settled cost 0: spend is in Spent
        yield Close(rid, state, clearing or None, 0, t, ids[row], price)
