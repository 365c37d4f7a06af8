import numpy as np
import pytest

from adbid.stages.retrieval import Retriever


def test_top_k_matches_brute_force_inner_product(tiny_world):
    r = Retriever(tiny_world.ad_index, top_k=5, threads=1)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((50, tiny_world.dim)).astype(np.float32)
    got = r.search(q)
    ads = tiny_world.ad_index.reconstruct_n(0, tiny_world.ad_index.ntotal)
    want = np.argsort(-(q @ ads.T), axis=1, kind="stable")[:, :5]
    # Compare scores, not ids: equal-score ties may be ordered differently.
    np.testing.assert_allclose(np.take_along_axis(q @ ads.T, got, 1),
                               np.take_along_axis(q @ ads.T, want, 1), rtol=1e-5)


def test_empty_batch_and_bad_shapes(tiny_world):
    r = Retriever(tiny_world.ad_index, top_k=4, threads=1)
    assert r.search(np.empty((0, tiny_world.dim), np.float32)).shape == (0, 4)
    with pytest.raises(ValueError):
        r.search(np.zeros((2, tiny_world.dim + 1), np.float32))


def test_top_k_above_catalogue_size_is_capped(tiny_world):
    r = Retriever(tiny_world.ad_index, top_k=10_000, threads=1)
    assert r.top_k == tiny_world.ad_index.ntotal


def test_thread_setting_holds_on_executor_threads(tiny_world):
    """OpenMP's thread count is per thread: a search on a fresh thread (the server's
    executor) must run with the configured count, not one OpenMP thread per core."""
    import threading

    import faiss

    r = Retriever(tiny_world.ad_index, top_k=4, threads=1)
    seen = []

    def search():
        r.search(np.zeros((3, tiny_world.dim), np.float32))
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=search)
    t.start()
    t.join()
    assert seen == [1]


def test_search_within_returns_the_best_of_the_allowed_ads_only(tiny_world):
    r = Retriever(tiny_world.ad_index, top_k=4, threads=1)
    q = np.random.default_rng(5).standard_normal(tiny_world.dim).astype(np.float32)
    ads = tiny_world.ad_index.reconstruct_n(0, tiny_world.ad_index.ntotal)
    allowed = np.array([3, 17, 42, 64, 99, 100])
    got = r.search_within(q, allowed)
    want = allowed[np.argsort(-(ads[allowed] @ q), kind="stable")[:4]]
    assert set(got.tolist()) == set(want.tolist())
    few = r.search_within(q, np.array([7, 8]))  # fewer than K: padded with -1
    assert sorted(few.tolist()) == [-1, -1, 7, 8]


def test_an_inverted_list_index_is_searched_in_a_32nd_of_its_lists():
    """Above 10^4 ads the demo world builds IVF; the retriever probes nlist / 32 lists,
    which finds an ad's own vector as its best match nearly always."""
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    ads = centres[rng.integers(0, 40, 12_000)] + 0.3 * rng.standard_normal((12_000, 32))
    ads = (ads / np.linalg.norm(ads, axis=1, keepdims=True)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, int(4 * np.sqrt(len(ads))),
                               faiss.METRIC_INNER_PRODUCT)
    index.train(ads)
    index.add(ads)
    r = Retriever(index, top_k=8, threads=1)
    assert index.nprobe == index.nlist // 32 == 13
    probe = rng.integers(0, len(ads), 500)
    found = r.search(ads[probe])
    assert (found[:, 0] == probe).mean() > 0.95


def test_admissible_mirrors_the_decision_loops_targeting():
    """The targeting test of a second look mirrors the decision loop's test: active campaign, the
    event's country, device and size bits (0..63) set in the campaign's masks, and the
    event's site in the campaign's allow list when it has one."""
    from types import SimpleNamespace

    from adbid.stages.retrieval import admissible

    ad_campaign = np.array([0, 1, 2, 0])
    active = np.array([1, 1, 0], np.uint8)
    every = np.array([~np.uint64(0)] * 3, np.uint64)
    camps = SimpleNamespace(country_mask=np.array([0b01, 0b10, 0b11], np.uint64),
                            device_mask=every, size_mask=every,
                            site_allow_ptr=np.array([0, 0, 0, 0], np.int32),
                            site_allow_ids=np.array([], np.int32))
    cand = np.array([[1, 2, 0, 3, -1], [0, 1, 2, 3, -1]])

    def events(device, size, site=(5, 5)):
        return SimpleNamespace(country_bit=np.array([0, 1], np.int32),
                               device_bit=np.array(device, np.int32),
                               size_bit=np.array(size, np.int32),
                               site_id=np.array(site, np.int32))

    # event 0: device bit -1 admits nothing; event 1: size bit 64 admits nothing
    assert not admissible(cand, ad_campaign, active, camps, events([-1, 5], [3, 64])).any()
    ok = admissible(cand, ad_campaign, active, camps, events([2, 2], [3, 3]))
    assert ok.tolist() == [[False, False, True, True, False], [False, True, False, False, False]]
    # campaign 0 limited to sites 7 and 9: event 0 on site 9 keeps it, on site 5 loses it
    camps.site_allow_ptr = np.array([0, 2, 2, 2], np.int32)
    camps.site_allow_ids = np.array([9, 7], np.int32)
    ok = admissible(cand, ad_campaign, active, camps, events([2, 2], [3, 3], site=(9, 5)))
    assert ok[0].tolist() == [False, False, True, True, False]
    ok = admissible(cand, ad_campaign, active, camps, events([2, 2], [3, 3], site=(5, 5)))
    assert not ok[0].any()
    rows = np.array([1])  # a subset of the batch's events
    assert admissible(cand[1:], ad_campaign, active, camps, events([2, 2], [3, 3]),
                      rows).tolist() == [[False, True, False, False, False]]


def test_events_refused_for_their_top_k_get_a_second_look(tiny_world):
    """Same traffic, K 4: with a second look (overfetch 8) far fewer events are refused
    for targeting, more are bid, and every event that bid without it bids the same ad at
    the same price with it (a second look changes refused events only)."""
    import asyncio
    from dataclasses import replace

    from adbid.config import ServerConfig
    from adbid.edge.decode import decode_request
    from adbid.flow.deadlines import Timekeeper
    from adbid.money.ledger import SpendLedger
    from adbid.stages.pipeline import Pipeline, WorldStages
    from adbid.v1 import bidder_pb2 as pb
    from adbid.world.demo_traffic import make_events

    rng = np.random.default_rng(5)
    batches = [make_events(64, rng, n_users=2_000, test=True, id_prefix=f"t{i}-")
               for i in range(8)]

    async def run(overfetch: int) -> tuple[int, int, dict]:
        cfg = replace(ServerConfig(world=tiny_world.path, ledger=None), top_k=4,
                      overfetch=overfetch)
        p = Pipeline(WorldStages(tiny_world, cfg), cfg, SpendLedger(tiny_world.campaigns, None))
        keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)
        bids = refused = 0
        chosen = {}
        for events in batches:
            dec, _ = await p.run(decode_request(pb.BidRequest(events=events)),
                                 keeper.unbounded(learn=False))
            bids += int(dec.bid.sum())
            refused += int((dec.reason == pb.NO_BID_REASON_TARGETING).sum())
            chosen.update({events[i].request_id: (int(dec.ad_row[i]),
                                                  int(dec.price_cpm_micros[i]))
                           for i in np.flatnonzero(dec.bid).tolist()})
        p.close()
        return bids, refused, chosen

    bids_1, refused_1, chosen_1 = asyncio.run(run(1))
    bids_8, refused_8, chosen_8 = asyncio.run(run(8))
    assert refused_1 > 20 and refused_8 < refused_1 / 2
    assert bids_8 > bids_1
    assert {rid: chosen_8.get(rid) for rid in chosen_1} == chosen_1


@pytest.mark.parametrize("blocked", [True, False], ids=["avx2-blocks", "blas-rows"])
def test_list_by_list_search_finds_what_faiss_ivf_finds(blocked):
    """The list-by-list search of a batch (ext/listscan.pyx) scans the lists FAISS's IVF
    search would, so it returns FAISS's top K: same ads, same scores, ties aside; -1 past
    what the probed lists hold. Both kernels: blocks of 8 (AVX2) and rows (BLAS)."""
    import faiss

    from adbid import _listscan
    from adbid.stages.retrieval import ListScan, Retriever

    if blocked and not _listscan.block_kernel_usable():
        pytest.skip("this CPU has no AVX2 and FMA")

    rng = np.random.default_rng(3)
    ads = rng.standard_normal((4000, 32)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, 40, faiss.METRIC_INNER_PRODUCT)
    index.train(ads)
    index.add(ads)
    index.nprobe = 5
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    retriever = Retriever(index, 16, 1)
    retriever.scan = ListScan(index, blocked)
    assert (retriever.scan.blocks is not None) == blocked
    _, found = index.search(queries, 16)
    ours = retriever.search(queries)
    assert ours.shape == (300, 16)
    for row, (theirs, mine) in enumerate(zip(found, ours)):
        assert set(theirs) == set(mine) or np.allclose(  # a tie at the 16th place
            np.sort(ads[theirs] @ queries[row]), np.sort(ads[mine] @ queries[row]), atol=1e-5)
    got = ads[ours] @ queries[:, :, None]  # [B, K, 1]: in descending order
    assert (np.diff(got[:, :, 0], axis=1) <= 1e-5).all()
    deep = retriever.search(queries[:3], k=3000)  # more than 5 lists hold
    assert (deep[:, -1] == -1).all() and (deep[:, 0] >= 0).all()
    assert np.array_equal(np.sort(deep[0][deep[0] >= 0]),
                          np.sort(index.search(queries[:1], 3000)[1][0][:(deep[0] >= 0).sum()]))


def test_the_world_builder_probes_the_fewest_lists_for_its_recall():
    import faiss

    from adbid.world.demo_world import probes_for_recall

    rng = np.random.default_rng(4)
    ads = rng.standard_normal((5000, 16)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 64, faiss.METRIC_INNER_PRODUCT)
    index.train(ads)
    index.add(ads)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    exact = faiss.IndexFlatIP(16)
    exact.add(ads)
    _, truth = exact.search(queries, 16)

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        _, got = index.search(queries, 16)
        return np.mean([len(set(g) & set(t)) / 16 for g, t in zip(got, truth)])

    chosen = probes_for_recall(index, ads, queries, target=0.9)
    assert 1 < chosen < 64
    assert recall(chosen) >= 0.9 > recall(chosen - 1)
