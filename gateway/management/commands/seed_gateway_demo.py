"""The demo's token market, for ``make run``: the demo supplier serves DeepSeek-V3 through the
gateway at ``--upstream`` (a fake OpenAI-compatible server), and the demo buyer holds a matched
token allocation on it. Safe to run again: reuses a live allocation, else orders anew."""
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from gateway import services as gateway
from marketplace import services as market
from marketplace.demand import TokensDemand
from marketplace.models import Allocation, Listing, Node, Organisation
from matching.services import round_run


# DeepSeek's promotional V3 prices per million tokens (input on cache hit, on miss, output;
# ../shared/MARKET.md). The simulated market's endpoints ask more, so the demo buyer's order, whose
# limits are these prices, can only match the demo supplier's endpoint served through the gateway.
DEMO_PRICES = (Decimal("0.1"), Decimal("1"), Decimal("2"))


class Command(BaseCommand):
    help = "Register a demo token endpoint for the demo supplier and match a token order of the demo buyer."

    def add_arguments(self, parser):
        parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8002/deepseek/v1")

    def handle(self, *args, upstream: str, **options):
        supplier = Organisation.objects.filter(slug="demo-supplier").first()
        buyer = Organisation.objects.filter(slug="demo-buyer").first()
        if supplier is None or buyer is None:
            raise CommandError("run manage.py seed_demo first")
        node = Node.objects.filter(organisation=supplier, name="gz-h800-tokens").first() or market.node_create(
            organisation=supplier, name="gz-h800-tokens", chip_code="nvidia-h800-sxm", card_count=8,
            region_code="CN-GZ-GA", interconnect="infiniband")
        listing = Listing.objects.filter(node=node, status=Listing.Status.ACTIVE, end__gt=timezone.now()
                                         + timedelta(hours=2)).first()
        if listing is None:
            start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            listing = market.listing_create(
                organisation=supplier, node_id=node.pk, cards=8, start=start, end=start + timedelta(days=2),
                ask_per_card_hour=Decimal("10"), token_endpoint=market.TokenEndpoint("DeepSeek-V3", *DEMO_PRICES))
        gateway.endpoint_register(organisation=supplier, listing_id=listing.pk, base_url=upstream,
                                  credential="demo-upstream-secret", tokens_per_minute=5_000_000)
        live = Allocation.objects.filter(order__organisation=buyer, kind="tokens", parts__listing=listing,
                                         status__in=["confirmed", "running"]).first()
        if live is None:
            market.order_create_tokens(organisation=buyer, demand=TokensDemand(
                model="DeepSeek-V3", expected_input_tokens=10_000_000, expected_output_tokens=2_000_000,
                expected_cache_hit_ratio=Decimal("0.25"), max_price_input_hit_per_m=DEMO_PRICES[0],
                max_price_input_miss_per_m=DEMO_PRICES[1], max_price_output_per_m=DEMO_PRICES[2]))
            round_run(bucket="tokens")
            live = Allocation.objects.filter(order__organisation=buyer, kind="tokens", parts__listing=listing,
                                             status__in=["confirmed", "running"]).first()
        self.stdout.write(f"  token allocation {live.pk if live else '(none matched)'} of the demo buyer, "
                          f"served at {upstream}")
