import numpy as np

from adbid.stages.lookup import ContextEncoder, UserLookup, usable_user_id


def test_known_users_get_their_embedding_and_unknown_ones_zeros(tiny_world):
    lk = UserLookup(tiny_world)
    ids = [str(tiny_world.user_ids[3]), "", "nobody", "00000000-0000-0000-0000-000000000000",
           str(tiny_world.user_ids[0])]
    rows = lk.rows(ids)
    emb = lk.embeddings(rows)
    np.testing.assert_array_equal(emb[0], tiny_world.user_embeddings[3])
    np.testing.assert_array_equal(emb[4], tiny_world.user_embeddings[0])
    assert not emb[1:4].any()
    assert lk.known(rows).tolist() == [True, False, False, False, True]


def test_unusable_ids():
    assert not usable_user_id("") and not usable_user_id("0000-0000")
    assert usable_user_id("u0000001") and usable_user_id("0a")


def test_context_is_the_mean_topic_of_known_words(tiny_world):
    enc = ContextEncoder(tiny_world, capacity=4)
    first_topic = next(iter(tiny_world.context_words.values()))
    (w0, t0), (w1, t1) = next(iter(tiny_world.context_words.items())), \
        next((w, t) for w, t in tiny_world.context_words.items() if t != first_topic)
    out = enc.embeddings([f"{w0} unknownword", "nothing known here", f"{w0} {w1}", f"{w0} x"])
    topics = tiny_world.topic_embeddings
    np.testing.assert_allclose(out[0], topics[t0] / np.linalg.norm(topics[t0]), rtol=1e-5)
    assert not out[1].any()
    mean = (topics[t0] + topics[t1]) / 2
    np.testing.assert_allclose(out[2], mean / np.linalg.norm(mean), rtol=1e-5)
    # A full cache is cleared between calls and still gives the same vectors.
    again = enc.embeddings([f"{w0} {w1}", "a", "b"])
    np.testing.assert_allclose(again[0], out[2], rtol=1e-6)


def test_block_lists_resolve_per_event_from_flat_columns(tiny_world):
    """Flat block lists (as on the columnar wire) resolve to what each event's own list
    means: the OR of its IAB tier-1 bits, and the ids of its known advertiser domains in
    order (unknown domains and codes dropped), events without lists owning nothing."""
    from adbid.edge.decode import decode
    from adbid.stages.lookup import resolve
    from adbid.v1 import bidder_pb2 as pb
    from adbid.world import targeting

    rng = np.random.default_rng(3)
    domains = [*tiny_world.campaigns.advertiser_ids, "unknown.example", ""]
    codes = ["IAB1", "IAB7-39", "IAB26", "IAB27", "iab3", "x", ""]
    events = []
    for i in range(200):
        e = pb.AdEvent(request_id=f"r{i}")
        if rng.random() < 0.4:
            e.blocked_advertiser_domains.extend(rng.choice(domains, rng.integers(1, 4)).tolist())
        if rng.random() < 0.4:
            e.blocked_categories.extend(rng.choice(codes, rng.integers(1, 4)).tolist())
        events.append(e)
    batch = decode(events)
    resolve(batch, tiny_world.campaigns)
    known = tiny_world.campaigns.advertiser_ids
    for i, e in enumerate(events):
        tier1 = [c for c in e.blocked_categories if targeting.subcategory_code(c) is None]
        assert int(batch.blocked_category_mask[i]) == targeting.category_mask(tier1)
        ids = batch.blocked_adv_ids[batch.blocked_adv_ptr[i]:batch.blocked_adv_ptr[i + 1]]
        assert ids.tolist() == [known[d] for d in e.blocked_advertiser_domains if d in known]


def test_the_compiled_id_table_finds_exactly_the_ids_it_holds():
    """Rows by id like a dict over the array: prefixes, longer ids, non-ASCII ids and the
    ids that mean "no user" are not confused; repeats are counted, the first row kept."""
    import numpy as np

    from adbid._idtable import IdTable

    ids = np.array(["u1", "u12", "ü-ñ", "0000-0000", "", "0", "u12", "abc"])
    t = IdTable(ids)
    want = {"u1": 0, "u12": 1, "ü-ñ": 2, "abc": 7}
    assert {u: t.get(u) for u in want} == want and len(t) == 4 and t.duplicates == 1
    for missing in ("u", "u123", "u2", "", "0", "0000-0000", "abcd", "ü"):
        assert t.get(missing) is None and missing not in t
    rows = t.rows_of(["abc", "nope", "u1"], 99)
    assert rows.tolist() == [7, 99, 0] and rows.dtype == np.int64
    rng = np.random.default_rng(3)
    big = np.array([f"id{x}" for x in rng.permutation(50_000)])
    table = IdTable(big)
    probe = [str(x) for x in big[rng.integers(0, len(big), 1_000)]]
    rows = table.rows_of(probe, -1)
    assert (big[rows] == np.array(probe)).all()
    assert rows[:20].tolist() == [int(np.flatnonzero(big == p)[0]) for p in probe[:20]]


def test_a_world_whose_user_ids_repeat_is_refused():
    from types import SimpleNamespace

    import numpy as np
    import pytest

    from adbid.world.artifacts import WorldError

    world = SimpleNamespace(path="w", user_ids=np.array(["a", "b", "a"]),
                            user_embeddings=np.zeros((3, 4), np.float32))
    with pytest.raises(WorldError, match="1 duplicates"):
        UserLookup(world)


def test_a_float16_user_store_is_served_as_float32_at_half_the_memory(tmp_path, tiny_world):
    """The same world stored as float16: half the bytes, the lookup hands out float32 within
    float16's rounding of the float32 world's vectors."""
    import numpy as np

    from adbid.world.artifacts import World
    from adbid.world.demo_world import DemoWorldSpec, build

    build(tmp_path / "w16", DemoWorldSpec(**{**DemoWorldSpec.tiny().__dict__,
                                              "user_dtype": "float16"}), progress=False)
    w16 = World.load(tmp_path / "w16")
    assert w16.user_embeddings.dtype == np.float16
    assert w16.user_embeddings.nbytes * 2 == tiny_world.user_embeddings.nbytes
    ids = [str(u) for u in tiny_world.user_ids[:50]] + ["nobody"]
    got, want = UserLookup(w16), UserLookup(tiny_world)
    e16, e32 = got.embeddings(got.rows(ids)), want.embeddings(want.rows(ids))
    assert e16.dtype == np.float32 and not e16[-1].any()
    np.testing.assert_allclose(e16, e32, atol=1e-3)


def test_a_users_key_is_the_same_in_every_process():
    """Frequency counts shared between processes (and kept across restarts) need a key that
    hashes the id alone: two interpreters with different str-hash seeds agree on it."""
    import subprocess
    import sys

    from adbid._idtable import user_keys

    ids = ["u0000042", "", "00000000-0000-0000-0000-000000000000", "é-ü-用户", "u0000043"]
    code = f"from adbid._idtable import user_keys; print(user_keys({ids!r}).tolist())"
    seen = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2")]
    assert seen[0] == seen[1] == str(user_keys(ids).tolist())
    keys = user_keys(ids)
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == len(ids)
