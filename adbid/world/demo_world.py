"""`adbid demo-world`: a synthetic, deterministic world to serve and test against.

From one seed it draws topics, users with latent interests, campaigns and ads
with embeddings, targeting, values and budgets; a ground-truth response model;
logged impressions drawn from it; and an intent model trained on those logs and
exported to ONNX. The held-out AUC of the model and of the true probabilities
go into the manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnx
from tqdm import tqdm

import adbid
from adbid.world import artifacts as world
from adbid.world import creatives, currency, intent_model, targeting

log = logging.getLogger(__name__)

# Context vocabulary: each topic has a few words; a page's context text is
# made of them. The demo traffic generator draws from the same list.
TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    ("football", "soccer", "league"), ("tennis", "racket", "wimbledon"),
    ("running", "marathon", "sneakers"), ("cycling", "bike", "tour"),
    ("recipes", "cooking", "kitchen"), ("wine", "vineyard", "sommelier"),
    ("coffee", "espresso", "barista"), ("vegan", "plantbased", "tofu"),
    ("travel", "flights", "hotels"), ("beach", "resort", "island"),
    ("skiing", "snow", "alps"), ("camping", "hiking", "tent"),
    ("cars", "sedan", "dealership"), ("electric", "ev", "charging"),
    ("motorbike", "helmet", "rider"), ("finance", "stocks", "investing"),
    ("crypto", "bitcoin", "wallet"), ("insurance", "policy", "claims"),
    ("mortgage", "realestate", "housing"), ("fashion", "dresses", "runway"),
    ("sneakerhead", "streetwear", "drops"), ("beauty", "skincare", "makeup"),
    ("fitness", "gym", "workout"), ("yoga", "meditation", "wellness"),
    ("gaming", "console", "esports"), ("smartphones", "android", "iphone"),
    ("laptops", "hardware", "gpu"), ("movies", "cinema", "trailers"),
    ("music", "concerts", "vinyl"), ("books", "novels", "reading"),
    ("parenting", "baby", "toddler"), ("pets", "puppy", "kitten"),
)  # fmt: skip


DEMO_SITES = 500  # demo traffic comes from site0.example .. site499.example


@dataclass(frozen=True)
class DemoWorldSpec:
    """Sizes and the seed. The defaults build in well under a minute on 2 cores."""

    seed: int = 42
    users: int = 100_000
    campaigns: int = 300
    ads_per_campaign: int = 10
    impressions: int = 200_000
    dim: int = 64
    hidden: int = 32
    train_epochs: int = 12
    user_dtype: str = "float32"  # or "float16": the store at half the memory

    @classmethod
    def tiny(cls, seed: int = 7) -> DemoWorldSpec:
        """A world for tests: builds in about a second."""
        return cls(seed=seed, users=2_000, campaigns=24, ads_per_campaign=5,
                   impressions=20_000, dim=16, hidden=8, train_epochs=8)


def user_id(n: int) -> str:
    return f"u{n:07d}"


def user_ids(n: int) -> np.ndarray:
    """user_id(i) for i < n, as a numpy str array, without a Python string per user."""
    return np.char.add("u", np.char.zfill(np.arange(n).astype(str), 7))


# The demo world's generator, revised whenever what it builds changes (files, model,
# index): a default demo world built by an older one is rebuilt (adbid.cli).
BUILDER = 2

USER_CHUNK = 1_000_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def true_probability(ua: np.ndarray, ca: np.ndarray, device: np.ndarray) -> np.ndarray:
    """Ground-truth P(intent) from user-ad and context-ad affinity (cosines) and device."""
    device_effect = np.array([-0.3, 0.2, 0.0, 0.1, -0.2])
    logit = -4.5 + 2.8 * ua + 1.6 * ca + 1.5 * ua * ca + device_effect[device]
    return 1.0 / (1.0 + np.exp(-logit))


def probes_for_recall(index: faiss.IndexIVF, ads: np.ndarray, queries: np.ndarray,
                      target: float = 0.96, k: int = 16) -> int:
    """The fewest lists to probe for recall@k >= target against exact search."""
    exact = faiss.IndexFlatIP(index.d)
    exact.add(ads)
    _, truth = exact.search(queries, k)
    for nprobe in range(1, index.nlist + 1):
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
        if hits >= target * k * len(queries):
            return nprobe
    return index.nlist


def build(out: Path, spec: DemoWorldSpec | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Build the world into `out` (replaced atomically if it exists); returns the manifest."""
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    t_start = time.perf_counter()
    spec = spec or DemoWorldSpec()
    rng = np.random.default_rng(spec.seed)
    steps = tqdm(total=7, desc="demo world", unit="step", disable=not progress)
    n_topics, d = len(TOPIC_WORDS), spec.dim

    steps.set_postfix_str("users")
    topics = _unit(rng.standard_normal((n_topics, d)))
    users = np.empty((spec.users, d), np.float32)
    user_top_topic = np.empty(spec.users, np.int64)
    # In chunks, so that 10^7 users need no float64 temporaries of their full size (one
    # chunk up to a million: the same draws as one pass).
    for lo in range(0, spec.users, USER_CHUNK):
        m = min(USER_CHUNK, spec.users - lo)
        interest = rng.dirichlet(np.full(n_topics, 0.08), size=m)
        users[lo:lo + m] = _unit(interest @ topics + 0.35 * _unit(rng.standard_normal((m, d))))
        user_top_topic[lo:lo + m] = interest.argmax(axis=1)
    steps.update()

    steps.set_postfix_str("campaigns and ads")
    camp_topic = rng.integers(0, n_topics, spec.campaigns)
    campaigns = []
    for c in range(spec.campaigns):
        narrow = rng.random(3) < np.array([0.35, 0.25, 0.25])
        campaigns.append({
            "campaign_id": f"c{c:04d}",
            "name": f"{TOPIC_WORDS[camp_topic[c]][0]} campaign {c}",
            "active": bool(rng.random() > 0.03),
            "topic": int(camp_topic[c]),
            "value_per_action_micros": int(rng.integers(10, 150)) * 1000,
            "budget_micros": int(rng.integers(200, 2000)) * 1_000_000,
            "countries": sorted(rng.choice(targeting.COUNTRIES, rng.integers(1, 8), replace=False)
                                .tolist()) if narrow[0] else [],
            "device_types": sorted(rng.choice([1, 2, 3, 4], rng.integers(1, 4), replace=False)
                                   .tolist()) if narrow[1] else [],
            "slot_sizes": sorted(f"{w}x{h}" for w, h in (targeting.SLOT_SIZES[i] for i in
                                 rng.choice(len(targeting.SLOT_SIZES), rng.integers(2, 6),
                                            replace=False))) if narrow[2] else [],
            "advertiser_domain": f"advertiser{c // 3}.example",
            "categories": [f"IAB{1 + camp_topic[c] % targeting.N_IAB_TIER1}"],
            "site_allow": [],
            "site_block": [f"site{s}.example" for s in rng.choice(DEMO_SITES, 3, replace=False)]
            if rng.random() < 0.2 else [],
            "frequency_cap": {"impressions": int(rng.integers(2, 10)), "window_s": 86_400}
            if rng.random() < 0.3 else None,
            "pacing": "even" if rng.random() < 0.5 else "asap",
            # Every sixth campaign sells through a private deal too.
            "deals": [{"id": f"deal-{c:04d}", "floor_cpm_micros": 1_000_000, "wseat": []}]
            if c % 6 == 0 else [],
        })
    ad_campaign = np.repeat(np.arange(spec.campaigns, dtype=np.int32), spec.ads_per_campaign)
    n_ads = len(ad_campaign)
    ads = _unit(topics[camp_topic[ad_campaign]] + 0.45 * _unit(rng.standard_normal((n_ads, d))))
    creative_ids = np.array([f"cr{a:05d}" for a in range(n_ads)])
    steps.update()

    steps.set_postfix_str("logged impressions")
    n = spec.impressions
    imp_user = rng.integers(0, spec.users, n)
    on_interest = rng.random(n) < 0.6
    imp_topic = np.where(on_interest, user_top_topic[imp_user], rng.integers(0, n_topics, n))
    imp_ctx = topics[imp_topic]
    # Half the logged ads come from the page's topic (what retrieval would surface), half random.
    topical_ads = [np.flatnonzero(camp_topic[ad_campaign] == t) for t in range(n_topics)]
    random_ad = rng.integers(0, n_ads, n)
    imp_ad = np.array([rng.choice(topical_ads[t]) if len(topical_ads[t]) and r < 0.5 else a
                       for t, r, a in zip(imp_topic, rng.random(n), random_ad)])
    imp_device = rng.integers(0, intent_model.N_DEVICE_TYPES, n)
    u, a = users[imp_user], ads[imp_ad]
    p_true = true_probability((u * a).sum(1), (imp_ctx * a).sum(1), imp_device)
    clicked = rng.random(n) < p_true
    steps.update()

    steps.set_postfix_str("training intent model")
    x = intent_model.pair_features(u, imp_ctx, a, imp_device)
    n_train = int(0.8 * n)
    mlp = MLPClassifier(hidden_layer_sizes=(spec.hidden,), max_iter=spec.train_epochs,
                        batch_size=512, learning_rate_init=3e-3, random_state=spec.seed,
                        tol=0.0, n_iter_no_change=spec.train_epochs + 1)
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed epoch budget by design
        mlp.fit(x[:n_train], clicked[:n_train])
    steps.update()

    steps.set_postfix_str("exporting ONNX")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists()
                                else None))
    # Calibration: bids price P(intent) as a probability. Measured on held-out impressions;
    # above the target, Platt scaling fitted on the training impressions goes into the graph.
    test = slice(n_train, n)
    p_sklearn = mlp.predict_proba(x[test])[:, 1]
    raw = intent_model.reliability(p_sklearn, clicked[test])
    platt = (1.0, 0.0)
    if raw["ece"] > intent_model.CALIBRATION_TARGET:
        platt = intent_model.fit_platt(mlp.predict_proba(x[:n_train])[:, 1], clicked[:n_train])
    model = intent_model.export_mlp(mlp.coefs_, mlp.intercepts_, ads, platt)
    onnx.save(model, tmp / world.MODEL)
    # AUC of the exported graph itself, through onnxruntime: checks the export too.
    sess = ort.InferenceSession(str(tmp / world.MODEL), providers=["CPUExecutionProvider"])
    p_model = sess.run([intent_model.OUTPUT], {
        "user": u[test], "context": imp_ctx[test], "device": imp_device[test].astype(np.int64),
        "cand_ad": imp_ad[test].astype(np.int64)[:, None]})[0][:, 0]
    expected = 1 / (1 + np.exp(-(platt[0] * intent_model.logit(p_sklearn) + platt[1])))
    max_export_error = float(np.abs(p_model - expected).max())
    if max_export_error > 1e-4:
        raise RuntimeError(f"ONNX export disagrees with scikit-learn by {max_export_error:.2e}")
    model_auc = float(roc_auc_score(clicked[test], p_model))
    calibrated = intent_model.reliability(p_model, clicked[test])
    truth_auc = float(roc_auc_score(clicked[test], p_true[test]))
    steps.update()

    steps.set_postfix_str("FAISS index")
    # Flat (exact) inner product up to 10^4 ads; above, inverted lists (sqrt(N) of them,
    # k-means on the ads), HNSW (M 32) having stayed near recall 0.8 at any efSearch. The
    # lists probed are the fewest that reach recall@16 0.96 against exact search on a
    # sample of the world's users; FAISS keeps that nprobe in the index file. Fewer,
    # longer lists suit the list-by-list search (ext/listscan.pyx; docs/performance.md).
    if n_ads <= 10_000:
        index = faiss.IndexFlatIP(d)
        index.add(ads)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, int(np.sqrt(n_ads)),
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(ads)
        index.add(ads)
        sample = np.random.default_rng(spec.seed + 1).integers(0, spec.users, 512)
        index.nprobe = probes_for_recall(index, ads, users[sample])
    faiss.write_index(index, str(tmp / world.INDEX))
    steps.update()

    steps.set_postfix_str("writing")
    np.save(tmp / "ad_campaign.npy", ad_campaign)
    np.save(tmp / "ad_creative_ids.npy", creative_ids)
    np.save(tmp / "user_ids.npy", user_ids(spec.users))
    np.save(tmp / "user_embeddings.npy", users.astype(spec.user_dtype))
    np.save(tmp / "topic_embeddings.npy", topics)
    words = {w: t for t, ws in enumerate(TOPIC_WORDS) for w in ws}
    (tmp / "context_words.json").write_text(json.dumps(words, indent=1) + "\n")
    (tmp / "campaigns.json").write_text(json.dumps(campaigns, indent=1) + "\n")
    # The last ad of every campaign (of three or more) is a video creative.
    video = {str(creative_ids[a]): {
        "duration_s": int(rng.choice([6, 15, 30])), "mimes": ["video/mp4", "video/webm"],
        "protocols": [2, 3, 5, 6, 7, 8], "w": 640, "h": 360}
        for a in range(n_ads) if spec.ads_per_campaign >= 3
        and a % spec.ads_per_campaign == spec.ads_per_campaign - 1}
    # Some banners carry creative attributes (AdCOM: 3 expandable, 1 audio auto-play, 6
    # in-banner video auto-play), for publishers' battr to block.
    attrs = {str(creative_ids[a]): [3] if a % 7 == 0 else [1, 6]
             for a in range(n_ads) if (a % 7 == 0 or a % 11 == 0)
             and str(creative_ids[a]) not in video}
    (tmp / creatives.FILE).write_text(json.dumps({"video": video, "attrs": attrs}, indent=1)
                                      + "\n")
    (tmp / currency.FILE).write_text(currency.Currencies().as_json() + "\n")
    manifest = world.write_manifest(tmp, {
        "name": f"demo-s{spec.seed}",
        "adbid_version": adbid.__version__,
        "builder": BUILDER,
        "created_unix_s": int(time.time()),
        "spec": asdict(spec),
        "counts": {"users": spec.users, "ads": n_ads, "campaigns": spec.campaigns,
                   "topics": n_topics, "impressions": n, "dim": d},
        "model": {"kind": f"MLP({2 * d + intent_model.N_DEVICE_TYPES}->{spec.hidden}->1)",
                  "auc": model_auc, "ground_truth_auc": truth_auc,
                  "heldout_impressions": n - n_train, "click_rate": float(clicked.mean()),
                  "max_export_error": max_export_error,
                  # Expected calibration error on held-out impressions (10 bins of equal
                  # count), as served, and before calibration; its reliability curve.
                  "ece": calibrated["ece"], "ece_before_calibration": raw["ece"],
                  "calibration": {"method": "platt", "a": platt[0], "b": platt[1]}
                  if platt != (1.0, 0.0) else {"method": "none"},
                  "reliability": calibrated["curve"],
                  "ground_truth_ece": intent_model.reliability(p_true[test],
                                                               clicked[test])["ece"]},
        "index": type(index).__name__,
        "build_seconds": round(time.perf_counter() - t_start, 2),
    })
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    steps.update()
    steps.close()
    return manifest
