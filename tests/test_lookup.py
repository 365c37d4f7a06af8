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
