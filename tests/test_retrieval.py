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
