"""A demo admin, one demo supplier (with a node and a listing) and one demo buyer with 10,000 CNY.

Safe to run again: the organisations are reused, and each run issues fresh demo API keys (the old
ones are revoked, since a stored key can never be shown again).
"""
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from billing.services import wallet_top_up
from marketplace import services
from marketplace.models import ApiKey, Listing, Node, Organisation, Role


class Command(BaseCommand):
    help = "Create the demo admin, supplier and buyer, and print their API keys."

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", default="admin")

    def handle(self, *args, **options):
        if settings.ENVIRONMENT == "production":
            raise CommandError("seed_demo creates a known admin login and demo money; it never runs with "
                               "production settings.")
        self.seed(options)

    @transaction.atomic
    def seed(self, options):
        User = get_user_model()
        admin, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
            admin.set_password(options["admin_password"])
            admin.save()

        supplier = Organisation.objects.filter(slug="demo-supplier").first() or services.organisation_create(
            name="Demo Supplier (Guizhou)", slug="demo-supplier", is_supplier=True, home_region_code="CN-GZ")
        buyer = Organisation.objects.filter(slug="demo-buyer").first() or services.organisation_create(
            name="Demo Buyer (Shanghai)", slug="demo-buyer", is_buyer=True, home_region_code="CN-SH")

        node = Node.objects.filter(organisation=supplier, name="gz-h800-01").first() or services.node_create(
            organisation=supplier, name="gz-h800-01", chip_code="nvidia-h800-sxm", card_count=8,
            region_code="CN-GZ-GA", interconnect="infiniband", fabric_id="ga-ib-1")
        if not Listing.objects.filter(node=node, status=Listing.Status.ACTIVE, end__gt=timezone.now()).exists():
            start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            services.listing_create(organisation=supplier, node_id=node.pk, cards=8, start=start,
                                    end=start + timedelta(days=2), ask_per_card_hour=Decimal("14.50"))

        # Matches hold the buyer's maximum cost, so the demo buyer starts with money (once).
        wallet_top_up(organisation_id=buyer.pk, amount=Decimal("10000"), reference="demo-buyer-opening-credit")

        ApiKey.objects.filter(organisation__in=[supplier, buyer], name="demo", revoked_at__isnull=True).update(
            revoked_at=timezone.now())
        _, supplier_key = services.api_key_create(organisation=supplier, name="demo", role=Role.OWNER)
        _, buyer_key = services.api_key_create(organisation=buyer, name="demo", role=Role.OWNER)
        self.stdout.write(self.style.SUCCESS("Demo ready."))
        self.stdout.write(f"  admin login:      admin / {options['admin_password'] if created else '(unchanged)'}")
        self.stdout.write(f"  SUPPLIER_KEY={supplier_key}")
        self.stdout.write(f"  BUYER_KEY={buyer_key}")
