"""factory_boy factories. Capacity (listings and their slot calendar) is always created through
``listing_create`` so tests exercise the same path as the API."""
from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from billing import services as billing
from marketplace import services
from marketplace.models import ChipType, Node, Organisation, Region


DEFAULT_FUNDS = Decimal("1000000")


def next_hour(hours_ahead: int = 1):
    return timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_ahead)


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    is_supplier = True
    is_buyer = True
    home_region = factory.LazyFunction(lambda: Region.objects.get(code="CN-SH"))

    @factory.post_generation
    def funds(organisation, create, amount, **kwargs):
        """Buyers start with money in their wallet (matches hold their maximum cost), unless a
        test says otherwise with ``funds=0``."""
        amount = Decimal(DEFAULT_FUNDS if amount is None else amount)
        if create and organisation.is_buyer and amount > 0:
            billing.wallet_top_up(organisation_id=organisation.pk, amount=amount,
                                  reference=f"factory:{organisation.pk}")


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"node-{n}")
    chip = factory.LazyFunction(lambda: ChipType.objects.get(code="nvidia-h800-sxm"))
    card_count = 8
    region = factory.LazyFunction(lambda: Region.objects.get(code="CN-GZ-GA"))
    interconnect = "infiniband"
    fabric_id = ""


def make_listing(node: Node, *, hours: int = 24, start=None, cards: int | None = None,
                 ask: str = "10.00", **kwargs):
    start = start or next_hour(1)
    return services.listing_create(organisation=node.organisation, node_id=node.pk, cards=cards or node.card_count,
                                   start=start, end=start + timedelta(hours=hours), ask_per_card_hour=Decimal(ask),
                                   **kwargs)


def admin_user(username: str = "ops", *permissions: str, password: str = "x"):
    """A staff user holding exactly ``permissions`` (``app_label.codename``): ``is_staff`` alone
    lets an admin in, never act."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username=username, password=password, is_staff=True)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return get_user_model().objects.get(pk=user.pk)  # a fresh instance: no stale permission cache
