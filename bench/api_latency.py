"""API latency on a large book: p50 and p99 of the endpoints whose cost grows with the market.

    .venv/bin/python -m bench.api_latency             # 1,000 nodes x 90 days, a few minutes
    .venv/bin/python -m bench.api_latency --quick     # 100 nodes x 30 days
    .venv/bin/python -m bench.api_latency --sold-share 0   # the same book with nothing sold

Uses its own database, ``sanduisan_bench_api`` on the local PostgreSQL (created and migrated if
missing). The book is built once per size and sold share with set-based SQL (not timed) and kept
for the next run: ``--nodes`` 8-card nodes (H800, fabrics of 8 nodes per supplier, 20 suppliers)
each listed for ``--days`` days from the next hour, i.e. nodes x days x 24 listing-hour rows, of
which ``--sold-share`` (default 0.30, about the national utilisation in ../shared/MARKET.md) of
the card-hours are sold to jobs of 2 to 96 hours (log-uniform) and 1 to 8 cards, placed at
random (fixed seed) over the listings' days; jobs on the same node stack up to its 8 cards. Only
``ListingHour.cards_sold`` is written: it is all the free calendar that quotes, explain and the
buyer figures read (allocations are only read for the caller's own orders and the bench buyer
has none matched), so the jobs get no orders or allocations. A buyer with 50 open card-hour
orders is recreated each run, and the listings earlier runs' ``listing_create`` made are
withdrawn first (they would add fully free supply to a sold book).

Requests go through the whole stack in-process (Django's handler, middleware with the
statement timeout, DRF, the real PostgreSQL and Redis), with a real API key:

- ``quote``: POST /quotes, 4 cards x 3 hours, any chip of 64 GB or more, window of 24 hours;
- ``quote_long_window``: POST /quotes, 4 cards x 3 hours in a window of 85 days (the search
  reads its window in growing chunks and stops for each listing at its first fit);
- ``quote_fabric``: POST /quotes, same_fabric, 64 cards x 1,000 hours in a 1,100-hour window;
- ``explain``: GET /orders/{id}/explain of one of the 50 open orders;
- ``figures_buyer``: GET /figures/buyer with the 50 open orders;
- ``listing_create``: POST /listings of 2,160 hours on a fresh node;
- ``me`` (baseline, same run): GET /me, the floor of the stack.

Targets (issue 11): p99 <= 150 ms for quotes and explain, <= 300 ms for figures and listing
create. A request the statement timeout cuts off answers 503 and is counted in ``errors``.
Prints a table, then one JSON object (the last line).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import setup_django  # noqa: E402

BENCH_DB = "sanduisan_bench_api"
NODES_PER_SUPPLIER = 50
FABRIC_SIZE = 8


def _book(*, nodes: int, days: int, sold_share: float) -> float:
    """Build (or keep) a book of ``nodes`` x ``days`` days of listed H800 capacity with about
    ``sold_share`` of its card-hours sold; returns the share actually sold."""
    from django.db import connection, transaction
    from django.utils import timezone

    from marketplace import services
    from marketplace.hours import hour_index
    from marketplace.models import ChipType, Listing, ListingHour, Node, Organisation, Region

    # the share is in the tag, so a run with another share rebuilds the book
    tag = f"book-{nodes}x{days}-sold{round(sold_share * 1000):03d}"
    book = Listing.objects.filter(organisation__slug__startswith=f"{tag}-s", status=Listing.Status.ACTIVE)
    if Organisation.objects.filter(slug=f"{tag}-s0").exists() and book.filter(
            end__gt=timezone.now() + timedelta(days=days - 2)).count() == nodes:
        return _sold_share(book)
    chip = ChipType.objects.get(code="nvidia-h800-sxm")
    region = Region.objects.get(code="CN-GZ-GA")
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    end = start + timedelta(days=days)
    with transaction.atomic():
        # a fresh book: old bench listings are withdrawn from the calendar wholesale
        ListingHour.objects.filter(listing__organisation__slug__startswith="book-").delete()
        Listing.objects.filter(organisation__slug__startswith="book-").update(status=Listing.Status.WITHDRAWN)
        Node.objects.filter(organisation__slug__startswith="book-").update(status=Node.Status.OFFLINE)
        suppliers = []
        for s in range((nodes + NODES_PER_SUPPLIER - 1) // NODES_PER_SUPPLIER):
            org = Organisation.objects.filter(slug=f"{tag}-s{s}").first() or services.organisation_create(
                name=f"Bench supplier {s}", slug=f"{tag}-s{s}", is_supplier=True, home_region_code="CN-GZ")
            suppliers.append(org)
        node_rows = [Node(organisation=suppliers[i // NODES_PER_SUPPLIER], name=f"n{i}-{int(time.time())}", chip=chip,
                          card_count=8, region=region, interconnect="infiniband",
                          fabric_id=f"fab-{i // FABRIC_SIZE}") for i in range(nodes)]
        created = Node.objects.bulk_create(node_rows, batch_size=1000)
        listings = Listing.objects.bulk_create([
            Listing(organisation_id=n.organisation_id, node=n, cards=8, start=start, end=end,
                    ask_per_card_hour=f"{8 + (i % 40) / 10:.2f}", min_cards=1, min_hours=1)
            for i, n in enumerate(created)], batch_size=1000)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO marketplace_listinghour (listing_id, node_id, hour, node_cards, cards_offered, cards_sold)"
                " SELECT l.id, l.node_id, h, 8, 8, 0 FROM marketplace_listing l,"
                " generate_series(%s, %s - 1) AS h WHERE l.id = ANY(%s)",
                [hour_index(start), hour_index(end), [l.pk for l in listings]])
            _sell(cursor, listing_ids=[l.pk for l in listings], first=hour_index(start), last=hour_index(end),
                  share=sold_share)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE marketplace_listinghour")
    return _sold_share(book)


# Jobs last 2 to 96 hours, log-uniform (mean 24.3 h), on 1 to 8 cards (mean 4.5): 109 card-hours.
JOB_CARD_HOURS = (96 - 2) / math.log(48) * 4.5
_JOBS = """
WITH jobs AS (
    SELECT (%(ids)s::bigint[])[1 + floor(random() * %(n)s)::int] AS listing_id,
           round(exp(ln(2) + random() * ln(48)))::int AS hours,
           1 + floor(random() * 8)::int AS cards, random() AS at
    FROM generate_series(1, %(jobs)s)
), placed AS (
    SELECT listing_id, %(first)s + floor(at * (%(span)s - hours + 1))::int AS from_hour, hours, cards FROM jobs
), hours AS (
    SELECT listing_id, h AS hour, sum(cards) AS cards
    FROM placed, generate_series(from_hour, from_hour + hours - 1) AS h GROUP BY listing_id, h
)
UPDATE marketplace_listinghour lh SET cards_sold = least(lh.cards_offered, lh.cards_sold + hours.cards)
FROM hours WHERE lh.listing_id = hours.listing_id AND lh.hour = hours.hour
"""


def _sell(cursor, *, listing_ids: list[int], first: int, last: int, share: float) -> None:
    """Sell about ``share`` of the listings' card-hours to random jobs (seeded, set-based): rounds
    of jobs until the sold card-hours are within 0.2% of the target (where jobs overlap, a node
    sells at most its cards, so each round asks for a little more than what is missing)."""
    if share <= 0:
        return
    total = len(listing_ids) * (last - first) * 8
    cursor.execute("SELECT setseed(0.42)")
    sold = 0
    for _ in range(12):
        missing = share * total - sold
        if missing < 0.002 * total:
            break
        jobs = max(1, round(missing / JOB_CARD_HOURS / (1 - sold / total)))
        cursor.execute(_JOBS, {"ids": listing_ids, "n": len(listing_ids), "jobs": jobs, "first": first,
                               "span": last - first})
        cursor.execute("SELECT coalesce(sum(cards_sold), 0) FROM marketplace_listinghour"
                       " WHERE cards_sold > 0 AND listing_id = ANY(%s)", [listing_ids])
        sold = cursor.fetchone()[0]


def _sold_share(book) -> float:
    from django.db.models import Sum

    totals = book.aggregate(offered=Sum("hours__cards_offered"), sold=Sum("hours__cards_sold"))
    return round(totals["sold"] / totals["offered"], 4) if totals["offered"] else 0.0


def _listers_withdraw() -> None:
    """Withdraw the listings earlier runs' ``listing_create`` made (their calendar rows deleted,
    as withdrawing does), so the book is the only supply quotes see."""
    from marketplace.models import Listing, ListingHour

    ListingHour.objects.filter(listing__organisation__slug__startswith="bench-lister-").delete()
    Listing.objects.filter(organisation__slug__startswith="bench-lister-").update(status=Listing.Status.WITHDRAWN)


def _buyer(open_orders: int):
    from decimal import Decimal

    from billing.services import wallet_top_up
    from marketplace import services
    from marketplace.demand import CardHoursDemand, RegionPolicySpec
    from marketplace.models import Role
    from django.utils import timezone

    slug = f"bench-buyer-{int(time.time())}"
    buyer = services.organisation_create(name="Bench buyer", slug=slug, is_buyer=True, home_region_code="CN-SH")
    wallet_top_up(organisation_id=buyer.pk, amount=Decimal("1000000"), reference=f"{slug}-opening")
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    orders = []
    for i in range(open_orders):
        # bids below every ask, so the orders stay open and explain has reasons to give
        orders.append(services.order_create_card_hours(organisation=buyer, demand=CardHoursDemand(
            duration_hours=2 + i % 6, earliest_start=start + timedelta(hours=i % 12),
            latest_end=start + timedelta(hours=48), max_price_per_card_hour=Decimal("5"), chips=None,
            min_memory_gb=64, cards=[1, 2, 4, 8, 16][i % 5],
            placement="same_fabric" if i % 5 == 4 else "single_node", region=RegionPolicySpec())))
    _, key = services.api_key_create(organisation=buyer, name="bench", role=Role.OWNER)
    return buyer, orders, key


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _measure(call, repeat: int) -> dict:
    times, errors = [], 0
    call()  # warm-up, not counted
    for _ in range(repeat):
        began = time.perf_counter()
        status = call()
        times.append((time.perf_counter() - began) * 1000)
        errors += status >= 400
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return {"n": repeat, "p50_ms": round(statistics.median(times), 1), "p99_ms": round(p99, 1),
            "max_ms": round(times[-1], 1), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sold-share", type=float, default=0.30,
                        help="share of the book's card-hours sold (0 to 0.95; default 0.30)")
    args = parser.parse_args()
    if not 0 <= args.sold_share <= 0.95:
        parser.error("--sold-share must be between 0 and 0.95")
    if args.quick:
        args.nodes, args.days, args.repeat = 100, 30, 10
    os.environ.setdefault("SANDUISAN_THROTTLE_API", "1000000/minute")
    setup_django(BENCH_DB)
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone
    from rest_framework.test import APIClient

    from marketplace import services
    from marketplace.models import Role

    settings.SANDUISAN_THROTTLE_RATES = {k: "1000000/minute" for k in settings.SANDUISAN_THROTTLE_RATES}
    began = time.perf_counter()
    _listers_withdraw()
    sold_share = _book(nodes=args.nodes, days=args.days, sold_share=args.sold_share)
    buyer, orders, buyer_key = _buyer(50)
    supplier = services.organisation_create(name="Bench lister", slug=f"bench-lister-{int(time.time())}",
                                            is_supplier=True, home_region_code="CN-GZ")
    _, supplier_key = services.api_key_create(organisation=supplier, name="bench", role=Role.OWNER)
    # planner statistics for every table the setup wrote, as autoanalyze keeps them in production
    # (autovacuum may be off on a bench machine: then listings and nodes, bulk-created, look empty
    # to the planner and the listings query of a quote takes a nested loop of bitmap ANDs)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    setup_s = time.perf_counter() - began

    buyer_client, supplier_client = APIClient(), APIClient()
    buyer_client.credentials(HTTP_AUTHORIZATION=f"Bearer {buyer_key}")
    supplier_client.credentials(HTTP_AUTHORIZATION=f"Bearer {supplier_key}")
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    quote = {"kind": "card_hours", "min_memory_gb": 64, "cards": 4, "duration_hours": 3,
             "window": {"earliest_start": _iso(start), "latest_end": _iso(start + timedelta(hours=24))},
             "max_price_per_card_hour": "12", "region": {"policy": "regions", "regions": ["CN"]}}
    long_window = dict(quote, window={"earliest_start": _iso(start),
                                      "latest_end": _iso(start + timedelta(days=min(85, args.days - 1)))})
    fabric_hours = min(1000, args.days * 24 - 48)
    fabric = {"kind": "card_hours", "chips": ["nvidia-h800-sxm"], "cards": 64, "duration_hours": fabric_hours,
              "placement": "same_fabric", "max_price_per_card_hour": "12",
              "window": {"earliest_start": _iso(start), "latest_end": _iso(start + timedelta(hours=fabric_hours + 100))}}
    listed = iter(range(10**6))
    # as config/wsgi.py does in a server's worker: the heap setup left is frozen, so the collector's
    # full passes (~80 ms in a process this size) do not walk it during the timed requests; after
    # one request, so that the URL conf and the views are part of it
    buyer_client.get("/api/v1/me")
    gc.collect()
    gc.freeze()

    def listing_create() -> int:
        node = supplier_client.post("/api/v1/nodes", {"name": f"bench-{next(listed)}-{time.time_ns()}",
                                                     "chip": "nvidia-h800-sxm", "card_count": 8, "region": "CN-GZ-GA",
                                                     "interconnect": "infiniband"}, format="json").json()["id"]
        first = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        body = {"node": node, "cards": 8, "start": _iso(first), "end": _iso(first + timedelta(hours=2160)),
                "ask_per_card_hour": "9.50"}
        began_inner = time.perf_counter()
        status = supplier_client.post("/api/v1/listings", body, format="json").status_code
        listing_create.elapsed = time.perf_counter() - began_inner
        return status

    figures = {
        "me": _measure(lambda: buyer_client.get("/api/v1/me").status_code, args.repeat),
        "quote": _measure(lambda: buyer_client.post("/api/v1/quotes", quote, format="json").status_code, args.repeat),
        "quote_long_window": _measure(
            lambda: buyer_client.post("/api/v1/quotes", long_window, format="json").status_code, args.repeat),
        "quote_fabric": _measure(lambda: buyer_client.post("/api/v1/quotes", fabric, format="json").status_code,
                                 max(3, args.repeat // 4)),
        "explain": _measure(lambda: buyer_client.get(f"/api/v1/orders/{orders[7].pk}/explain").status_code,
                            args.repeat),
        "figures_buyer": _measure(lambda: buyer_client.get("/api/v1/figures/buyer").status_code,
                                  max(3, args.repeat // 4)),
    }
    # listing create: only the POST /listings is timed (the node is created first, untimed)
    times, errors = [], 0
    for _ in range(max(3, args.repeat // 2)):
        errors += listing_create() >= 400
        times.append(listing_create.elapsed * 1000)
    times.sort()
    figures["listing_create"] = {"n": len(times), "p50_ms": round(statistics.median(times), 1),
                                 "p99_ms": round(times[-1], 1), "max_ms": round(times[-1], 1), "errors": errors}
    targets = {"quote": 150, "quote_long_window": 150, "quote_fabric": 150, "explain": 150, "figures_buyer": 300,
               "listing_create": 300}
    print(f"book: {args.nodes} nodes x {args.days} days ({args.nodes * args.days * 24:,} listing-hours), "
          f"{sold_share:.1%} of its card-hours sold (asked {args.sold_share:.0%}); setup {setup_s:.1f} s")
    print(f"{'endpoint':18} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'target':>7} {'errors':>6}")
    for name, figure in figures.items():
        target = targets.get(name)
        print(f"{name:18} {figure['n']:>4} {figure['p50_ms']:>9} {figure['p99_ms']:>9} "
              f"{(str(target) if target else 'base'):>7} {figure['errors']:>6}")
    print(json.dumps({"bench": "api_latency", "nodes": args.nodes, "days": args.days,
                      "listing_hours": args.nodes * args.days * 24, "sold_share": args.sold_share,
                      "sold_share_actual": sold_share, **{k: v for k, v in figures.items()},
                      "targets_p99_ms": targets,
                      "targets_met": {k: figures[k]["p99_ms"] <= t and not figures[k]["errors"]
                                      for k, t in targets.items()}}))


if __name__ == "__main__":
    main()
