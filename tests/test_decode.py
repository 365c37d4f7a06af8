import numpy as np

from adbid.edge.decode import decode
from adbid.v1 import bidder_pb2 as pb
from adbid.world import targeting


def event(**kw) -> pb.AdEvent:
    base = dict(request_id="r1", user_id="u0000001", context_text="football news",
                floor_cpm_micros=500_000, country="DE", device_type=pb.DEVICE_TYPE_MOBILE,
                slot_width_px=300, slot_height_px=250, auction_type=pb.AUCTION_TYPE_FIRST_PRICE)
    base.update(kw)
    return pb.AdEvent(**base)


def test_columns_keep_request_order_and_types():
    b = decode([event(request_id="a", country="US", slot_width_px=728, slot_height_px=90),
                event(request_id="b", country="XX", auction_type=pb.AUCTION_TYPE_SECOND_PRICE,
                      test=True, slot_width_px=1, slot_height_px=1)])
    assert b.request_id == ["a", "b"] and not b.errors
    assert b.floor_micros.dtype == np.int64 and b.floor_micros.tolist() == [500_000, 500_000]
    assert b.first_price.tolist() == [1, 0] and b.is_test.tolist() == [0, 1]
    assert b.country_bit.tolist() == [targeting.COUNTRY_BIT["US"], targeting.UNKNOWN_BIT]
    assert b.size_bit.tolist() == [targeting.SLOT_SIZES.index((728, 90)), targeting.UNKNOWN_BIT]
    assert b.device_bit.tolist() == [1, 1]


def test_empty_batch():
    b = decode([])
    assert len(b) == 0 and b.floor_micros.shape == (0,) and not b.errors


def test_slot_size_errors_name_their_field_and_zero_means_unknown():
    b = decode([event(request_id="w", slot_width_px=5000), event(request_id="h", slot_height_px=-1),
                event(request_id="zero", slot_width_px=0, slot_height_px=0)])
    assert b.errors[0].startswith("slot_width_px:") and "height" not in b.errors[0]
    assert b.errors[1].startswith("slot_height_px:") and "width" not in b.errors[1]
    assert 2 not in b.errors


def test_invalid_events_are_marked_with_field_and_problem():
    b = decode([
        event(request_id=""),
        event(request_id="dup"), event(request_id="dup"),
        event(request_id="neg", floor_cpm_micros=-1),
        event(request_id="dev", device_type=42),
        event(request_id="big", slot_width_px=100_000),
        event(request_id="ctx", context_text="x" * 2000),
        event(request_id="ok"),
    ])
    e = b.errors
    assert e[0].startswith("request_id") and "empty" in e[0]
    assert 1 not in e and "duplicate" in e[2]
    assert e[3].startswith("floor_cpm_micros") and e[4].startswith("device_type")
    assert e[5].startswith("slot_width_px: must be 0..4096") and e[6].startswith("context_text")
    assert 7 not in e
    assert b.device_type[4] == 0  # invalid enum never reaches the model's gather
