"""`adbid simulate`: a simulated day of auctions over the demo world's ground truth, the
same auctions bid by each shading strategy through adbid's real pipeline (in process).

Each auction: a demo-traffic event; the highest competing bid drawn from a log-normal
whose parameters depend on the publisher's site and the slot size, never shown to adbid
(each site is a thin, normal or crowded market); the event's floor; first or second
price as the event says (70% first). A bid wins when it reaches both the floor and the
competing bid; first price pays the bid, second price the larger of the two. Each win
converts with the world's true P(intent) for that user, ad and page, and a conversion is
worth the campaign's value per action. Notices go to the ledger as an exchange's would
(a loss releases the reservation); after a first-price auction the strategy is told the
minimum bid to win, as OpenRTB's ${AUCTION_MIN_TO_WIN} tells it.

Strategies: `fixed` (value x --shading, today's constant), `learned` (per site and size,
the competing bid's distribution fitted online from the minimum bids to win, bidding the
surplus-maximising price: adbid.stages.shading), `truthful` (no shading) and `oracle`
(the true distribution, the exact surplus-maximising price). Second price is bid
truthfully by all (the core's rule). Traffic follows a diurnal curve over 24 hours of
simulated time, pacing runs on that clock (a step every BATCH auctions), and half the
campaigns get small budgets (x --budget-scale). Each strategy runs the day twice: first
with the world's budgets (far above the day's traffic) to measure each campaign's demand,
then with the small budgets; a budget binds when that demand exceeded it, and the budget
spent and the pacing error are reported over the binding ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from adbid.config import ServerConfig
from adbid.edge.decode import decode_request
from adbid.flow.deadlines import Timekeeper
from adbid.money.ledger import SpendLedger
from adbid.money.units import impression_cost_micros
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.stages.shading import KnownMarket, LearnedShading, SegmentMarkets, ServedShading
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World
from adbid.world.demo_traffic import make_events
from adbid.world.demo_world import true_probability

STRATEGIES = ("fixed", "learned", "truthful", "oracle")
BATCH = 64  # auctions a pipeline batch; pacing steps after each (a simulated minute or two)
REGIMES = {"thin": (0.6e6, 0.6), "normal": (2.0e6, 0.5), "crowded": (5.0e6, 0.4)}  # median, sigma
HOURLY = np.array([0.3, 0.2, 0.15, 0.15, 0.2, 0.35, 0.6, 0.9, 1.0, 1.0, 1.0, 1.05, 1.1, 1.05,
                   1.0, 1.0, 1.05, 1.15, 1.3, 1.4, 1.35, 1.1, 0.8, 0.5])


def market(site: str, size: int, seed: int) -> tuple[float, float, str]:
    """The hidden (mu, sigma) of ln(highest competing bid, CPM micros) for a segment."""
    h = int.from_bytes(hashlib.sha256(f"{seed}|{site}|{size}".encode()).digest()[:8], "big")
    regime = ("thin", "normal", "crowded")[h % 3]
    median, sigma = REGIMES[regime]
    spread = 0.7 + 0.6 * ((h >> 8) % 1000) / 1000  # +-30% around the regime's median
    return math.log(median * spread), sigma, regime


class Books:
    """What one strategy did, in total and by hour."""

    def __init__(self) -> None:
        self.surplus = np.zeros(24, np.int64)
        self.spend = np.zeros(24, np.int64)
        self.conversions = np.zeros(24, np.int64)
        self.wins = np.zeros(24, np.int64)
        self.bids = np.zeros(24, np.int64)
        self.pacing_error = np.zeros(24)
        self.budget_spent = 0.0  # share of the binding budgets spent by the day's end
        self.spent_by_hour: list[np.ndarray] = []  # even-paced binding campaigns, at hour ends
        self.planned_by_hour: list[np.ndarray] = []
        self.spent_micros = np.zeros(0, np.int64)  # per campaign, by the day's end
        self.binding = 0  # campaigns whose demand exceeded their budget


async def run_strategy(strategy: str, world: World, stages: WorldStages, cfg: ServerConfig,
                       events: int, seed: int, budget_scale: float,
                       progress=None, demand: np.ndarray | None = None,
                       conversion_bonus: float = 0.0) -> Books:
    """One strategy's day. Without `demand`: with the world's budgets everywhere (the
    demand pass). With it (each campaign's spend in that pass): every other campaign's
    budget x budget_scale, binding where the demand exceeded it. `conversion_bonus`:
    the learned and oracle strategies' (ServedShading)."""
    shading = 1.0 if strategy == "truthful" else cfg.shading
    scfg = replace(cfg, shading=shading)  # cfg.pacing_profile: the day's traffic forecast
    ledger = SpendLedger(world.campaigns, None)
    # Half the campaigns (every other row) get budgets that bind in a day; the rest keep
    # theirs, far above what the day's traffic can spend.
    scaled = np.arange(len(world.campaigns)) % 2 == 0
    if demand is not None:
        ledger.budget_micros[scaled] = (world.campaigns.budget_micros[scaled]
                                        * budget_scale).astype(np.int64)
    binding = scaled if demand is None else scaled & (demand > ledger.budget_micros)
    p = Pipeline(stages, scfg, ledger)
    keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)
    camps = world.campaigns
    markets: SegmentMarkets | None = None
    if strategy == "learned":
        markets = LearnedShading(cfg.shading)
    elif strategy == "oracle":
        markets = KnownMarket(cfg.shading)
    if markets is not None:  # the policy `adbid serve --shading-policy learned` runs
        m = markets
        served = ServedShading(cfg.shading, world.ad_campaign, camps.value_per_action_micros,
                               p.core.pacing, model=m, conversion_bonus=conversion_bonus)

        def policy(batch, cand_ad, score):
            if isinstance(m, KnownMarket):
                for site, size in set(zip(batch.site_domain, batch.size_bit.tolist())):
                    if (site, size) not in m.index:
                        mu, sigma, _ = market(site, size, seed)
                        m.set(site, size, mu, sigma)
            return served(batch, cand_ad, score)
        p.shading_policy = policy
    ads = p.retriever.index.reconstruct_n(0, p.retriever.index.ntotal)
    day = math.floor(1_700_000_000 / 86_400) * 86_400  # a fixed simulated UTC day
    per_hour = np.maximum(1, (HOURLY / HOURLY.sum() * events).astype(int))
    out = Books()
    p.pacing.update(day)
    for hour in range(24):
        rng = np.random.default_rng([seed, hour])  # the same auctions for every strategy
        left = int(per_hour[hour])
        b = 0
        while left > 0:
            n = min(BATCH, left)
            left -= n
            evs = make_events(n, rng, id_prefix=f"s{hour}-{b}-")
            draws = rng.standard_normal(n), rng.random(n)
            b += 1
            batch = decode_request(pb.BidRequest(events=evs))
            dec, _ = await p.run(batch, keeper.unbounded(learn=False))
            now = day + hour * 3600 + 3600 * (1 - left / max(per_hour[hour], 1))
            await settle(p, batch, dec, draws, ads, seed, hour, out, markets)
            p.pacing.update(now)
        even = np.array([mode == "even" for mode in camps.pacing_mode]) & binding
        out.spent_by_hour.append(ledger.spent_micros[even].copy())
        out.planned_by_hour.append(p.pacing.planned_micros[even].copy())
        if progress is not None:
            progress.update(1)
    out.spent_micros = ledger.spent_micros.copy()
    out.binding = int(binding.sum())
    out.budget_spent = float(ledger.spent_micros[binding].sum()
                             / max(ledger.budget_micros[binding].sum(), 1))
    # Pacing error, hour by hour, over the even-paced campaigns whose budgets bind:
    # |spent - planned| / their budgets.
    even = np.array([mode == "even" for mode in camps.pacing_mode]) & binding
    bound = np.ones(int(even.sum()), bool)
    total = max(int(ledger.budget_micros[even].sum()), 1)
    for hour, (spent, planned) in enumerate(zip(out.spent_by_hour, out.planned_by_hour)):
        out.pacing_error[hour] = abs(int(spent[bound].sum()) - int(planned[bound].sum())) / total
    p.close()
    return out


async def settle(p: Pipeline, batch, dec, draws, ads: np.ndarray, seed: int, hour: int,
                 out: Books, markets: SegmentMarkets | None) -> None:
    """The auctions of one batch: who wins, what it costs, what converts; notices."""
    z, u_conv = draws
    idx = np.flatnonzero(dec.bid)
    if len(idx) == 0:
        return
    users = p.users.embeddings(p.users.rows([batch.user_id[i] for i in idx]))
    contexts = p.contexts.embeddings([batch.context_text[i] for i in idx])
    learned_segs, learned_m = [], []
    vpa = p.world.campaigns.value_per_action_micros
    for j, i in enumerate(idx.tolist()):
        site, size = batch.site_domain[i], int(batch.size_bit[i])
        mu, sigma, _ = market(site, size, seed)
        m = math.exp(mu + sigma * z[i])
        price, floor = int(dec.price_cpm_micros[i]), int(batch.floor_micros[i])
        first = bool(batch.first_price[i])
        won = price >= max(m, floor)
        rid = batch.request_id[i]
        out.bids[hour] += 1
        if first and isinstance(markets, LearnedShading):
            learned_segs.append(markets.segment(site, size))
            learned_m.append(m)
        if not won:
            r = p.ledger.apply(rid, pb.OUTCOME_TYPE_LOSS, 0)
            if r.released is not None:
                p.core.release_frequency(r.released, int(time.time()))
            continue
        clearing = price if first else int(max(m, floor))
        p.ledger.apply(rid, pb.OUTCOME_TYPE_WIN, clearing)
        ad = ads[int(dec.ad_row[i])]
        ua, ca = float(users[j] @ ad), float(contexts[j] @ ad)
        p_true = float(true_probability(np.array([ua]), np.array([ca]),
                                        np.array([min(int(batch.device_type[i]), 4)]))[0])
        converted = u_conv[i] < p_true
        c = int(dec.campaign_row[i])
        cost = impression_cost_micros(clearing)
        out.wins[hour] += 1
        out.spend[hour] += cost
        out.conversions[hour] += int(converted)
        out.surplus[hour] += int(converted) * int(vpa[c]) - cost
    if learned_segs:
        assert isinstance(markets, LearnedShading)
        markets.observe(np.array(learned_segs), np.array(learned_m))


async def retrieval_check(world: World, cfg: ServerConfig, seed: int,
                          batches: int = 8) -> dict:
    """Targeting inside retrieval against an exhaustive oracle (every ad scored), on the
    same test traffic: the share of events bid and the value of the bids."""
    out = {}
    for name, top_k in (("filtered", cfg.top_k), ("oracle", world.ad_index.ntotal)):
        c = replace(cfg, top_k=top_k)
        p = Pipeline(WorldStages(world, c), c, SpendLedger(world.campaigns, None))
        keeper = Timekeeper(c.default_deadline_ms, c.send_margin_ms)
        rng = np.random.default_rng([seed, 99])
        bids = events = value = 0
        for k in range(batches):
            dec, _ = await p.run(decode_request(pb.BidRequest(events=make_events(
                256, rng, test=True, id_prefix=f"r{k}-"))), keeper.unbounded(learn=False))
            bids += int(dec.bid.sum())
            events += len(dec.bid)
            value += int(dec.value_cpm_micros[dec.bid].sum())
        p.close()
        out[f"{name}_bid_rate"], out[f"{name}_value"] = bids / events, value
    return out


def summary(books: Books) -> dict:
    wins, bids = int(books.wins.sum()), int(books.bids.sum())
    return {"surplus_micros": int(books.surplus.sum()), "spend_micros": int(books.spend.sum()),
            "conversions": int(books.conversions.sum()), "wins": wins,
            "win_rate": wins / max(bids, 1),
            "budget_spent_fraction": books.budget_spent,
            "binding_budgets": books.binding,
            "worst_hour_pacing_error": float(books.pacing_error.max()),
            "by_hour": {"surplus_micros": books.surplus.tolist(),
                        "spend_micros": books.spend.tolist()}}


def simulate(world_dir: Path, strategies: tuple[str, ...] = STRATEGIES, events: int = 50_000,
             seed: int = 1, budget_scale: float = 0.0002, progress: bool = True,
             forecast: bool = False, conversion_bonus: float = 0.0) -> dict:
    """`forecast`: even-paced campaigns plan along the day's traffic curve (as a forecast
    from the day before would give it: exact here), else evenly over the day.
    `conversion_bonus`: see ServedShading (learned and oracle only)."""
    from tqdm import tqdm

    world = World.load(world_dir)
    cfg = ServerConfig(world=world.path, ledger=None, use_gpu=False,
                       pacing_profile=",".join(map(str, HOURLY)) if forecast else "")
    stages = WorldStages(world, cfg)
    bar = tqdm(total=24 * len(strategies), desc="simulated hours", unit="h",
               disable=not progress)
    report: dict = {"strategies": {}, "events": events, "seed": seed,
                    "world": world.version, "pacing_forecast": forecast,
                    "conversion_bonus_micros": conversion_bonus}
    for s in strategies:
        demand = asyncio.run(run_strategy(s, world, stages, cfg, events, seed, budget_scale,
                                          conversion_bonus=conversion_bonus))
        books = asyncio.run(run_strategy(s, world, stages, cfg, events, seed, budget_scale,
                                         bar, demand=demand.spent_micros,
                                         conversion_bonus=conversion_bonus))
        report["strategies"][s] = summary(books)
    bar.close()
    report["retrieval"] = asyncio.run(retrieval_check(world, cfg, seed))
    model = world.manifest.get("model", {})
    report["calibration"] = {"ece_before": model.get("ece_before_calibration"),
                             "ece_after": model.get("ece")}
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, s in report["strategies"].items():
        ax[0].plot(np.array(s["by_hour"]["surplus_micros"]) / 1e6, label=name)
        ax[1].plot(np.array(s["by_hour"]["spend_micros"]) / 1e6, label=name)
    ax[0].set_title("advertisers' surplus by hour (currency units)")
    ax[1].set_title("spend by hour (currency units)")
    for a in ax:
        a.set_xlabel("simulated hour")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
