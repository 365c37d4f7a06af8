import numpy as np

from adbid.lookup import ContextEncoder, UserLookup, usable_user_id


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
    (w0, t0), (w1, t1) = list(tiny_world.context_words.items())[0], \
        [(w, t) for w, t in tiny_world.context_words.items()
         if t != list(tiny_world.context_words.values())[0]][0]
    out = enc.embeddings([f"{w0} unknownword", "nothing known here", f"{w0} {w1}", f"{w0} x"])
    topics = tiny_world.topic_embeddings
    np.testing.assert_allclose(out[0], topics[t0] / np.linalg.norm(topics[t0]), rtol=1e-5)
    assert not out[1].any()
    mean = (topics[t0] + topics[t1]) / 2
    np.testing.assert_allclose(out[2], mean / np.linalg.norm(mean), rtol=1e-5)
    # A full cache is cleared between calls and still gives the same vectors.
    again = enc.embeddings([f"{w0} {w1}", "a", "b"])
    np.testing.assert_allclose(again[0], out[2], rtol=1e-6)
