"""Event fingerprints (what a retried request id is compared by): the same content gives
the same fingerprint whatever the request id and the order of block lists; any other
field changed gives another."""

import numpy as np
import pytest

from adbid.edge.decode import decode
from adbid.stages.batch import EventBatch
from adbid.v1 import bidder_pb2 as pb


def event(**change) -> pb.AdEvent:
    fields = dict(request_id="r1", user_id="u42", context_text="football scores",
                  floor_cpm_micros=100_000, auction_type=pb.AUCTION_TYPE_SECOND_PRICE,
                  country="US", device_type=pb.DEVICE_TYPE_MOBILE, slot_width_px=300,
                  slot_height_px=250, site_domain="news.example",
                  blocked_advertiser_domains=["a.example", "b.example"],
                  blocked_categories=["IAB7", "IAB9"])
    fields.update(change)
    return pb.AdEvent(**fields)


CHANGES = [dict(user_id="u43"), dict(context_text="tennis"), dict(floor_cpm_micros=100_001),
           dict(auction_type=pb.AUCTION_TYPE_FIRST_PRICE), dict(country="FR"),
           dict(device_type=pb.DEVICE_TYPE_DESKTOP), dict(slot_width_px=728, slot_height_px=90),
           dict(site_domain="other.example"), dict(blocked_advertiser_domains=["a.example"]),
           dict(blocked_categories=["IAB7", "IAB9", "IAB3"]), dict(test=True)]


def fingerprints(events: list[pb.AdEvent], positions=None) -> list[int]:
    batch = decode(events)
    return batch.fingerprints(range(len(events)) if positions is None else positions).tolist()


def test_same_content_same_fingerprint_whatever_the_id_and_block_list_order():
    same = [event(), event(request_id="r2"),
            event(request_id="r3", blocked_advertiser_domains=["b.example", "a.example"],
                  blocked_categories=["IAB9", "IAB7"])]
    assert len(set(fingerprints(same))) == 1


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: "+".join(c))
def test_any_other_field_changes_it(change):
    base, other = fingerprints([event(), event(request_id="r2", **change)])
    assert base != other


def test_positions_pick_events_and_empty_block_lists_count():
    events = [event(blocked_advertiser_domains=[], blocked_categories=[]), event(request_id="r2"),
              event(request_id="r3", blocked_advertiser_domains=[], blocked_categories=[])]
    all_three = fingerprints(events)
    assert fingerprints(events, [2, 1]) == [all_three[2], all_three[1]]
    assert all_three[0] == all_three[2] != all_three[1]
    assert fingerprints(events, []) == []
    with pytest.raises(IndexError):
        fingerprints(events, [3])


def test_resolved_and_unresolved_batches_agree_on_the_user(tiny_world):
    """Before the lookup stage (a retry is checked then) and after it (a bid's fingerprint
    is kept then), the same events give the same fingerprints."""
    from adbid.stages.lookup import resolve

    batch: EventBatch = decode([event(), event(request_id="r2", user_id="u9")])
    before = batch.fingerprints(np.arange(2)).tolist()
    resolve(batch, tiny_world.campaigns)
    assert batch.user_key is not None
    assert batch.fingerprints(np.arange(2)).tolist() == before
