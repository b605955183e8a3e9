"""The double-entry ledger. Every transfer's entries sum to zero, enforced by PostgreSQL (a
deferred constraint trigger, see migration 0002), not only in Python; accounts that may not go
into overdraft carry a CHECK constraint on their balance."""
from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q

from marketplace.models import Organisation

AMOUNT = {"max_digits": 30, "decimal_places": 12}


class Account(models.Model):
    class Kind(models.TextChoices):
        BUYER_WALLET = "buyer_wallet"  # available to spend
        BUYER_HELD = "buyer_held"  # held for matched orders
        SUPPLIER_PAYABLE = "supplier_payable"  # owed to the supplier
        PLATFORM_COMMISSION = "platform_commission"
        PLATFORM_ROUNDING = "platform_rounding"
        PLATFORM_CREDITS = "platform_credits"  # service credits the platform grants
        EXTERNAL = "external"  # money entering or leaving (top-ups, payouts); negative by nature

    organisation = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="accounts")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    currency = models.CharField(max_length=3, default="CNY")
    allow_negative = models.BooleanField(default=False)
    balance = models.DecimalField(default=Decimal(0), **AMOUNT)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "kind", "currency"], name="account_unique_per_org",
                                    nulls_distinct=False),
            models.CheckConstraint(condition=Q(allow_negative=True) | Q(balance__gte=0), name="account_no_overdraft"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.organisation_id or 'platform'}:{self.currency}"


class Transfer(models.Model):
    idempotency_id = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=40)
    currency = models.CharField(max_length=3, default="CNY")
    memo = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class Entry(models.Model):
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.DecimalField(**AMOUNT)  # positive credits the account, negative debits it

    class Meta:
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="entry_nonzero")]


class Hold(models.Model):
    """Two-phase hold: money moved from the buyer's wallet to its held account, then posted
    (possibly less, the rest released) or voided; voided automatically once it expires."""

    class Status(models.TextChoices):
        PENDING = "pending"
        POSTED = "posted"
        VOIDED = "voided"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="holds")
    reference = models.CharField(max_length=200, unique=True, help_text="e.g. order:123")
    amount = models.DecimalField(**AMOUNT)
    posted_amount = models.DecimalField(default=Decimal(0), **AMOUNT)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="hold_status_expiry")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0) & Q(posted_amount__gte=0)
                                   & Q(posted_amount__lte=models.F("amount")), name="hold_amounts_valid"),
        ]


class UsageEvent(models.Model):
    """Token usage reported by the supplier serving a token allocation, rated on arrival.
    ``(organisation, event_id)`` is unique: a replayed event is answered, never counted twice."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="usage_events")
    event_id = models.CharField(max_length=200)
    allocation = models.ForeignKey("marketplace.Allocation", on_delete=models.PROTECT, related_name="usage_events")
    occurred_at = models.DateTimeField()
    input_hit_tokens = models.BigIntegerField()
    input_miss_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    amount = models.DecimalField(**AMOUNT)
    payload_hash = models.CharField(max_length=64)
    settled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "event_id"], name="usageevent_unique_per_org"),
            models.CheckConstraint(condition=Q(input_hit_tokens__gte=0) & Q(input_miss_tokens__gte=0)
                                   & Q(output_tokens__gte=0), name="usageevent_counts_nonnegative"),
        ]
        indexes = [models.Index(fields=["allocation", "settled"], name="usageevent_alloc_settled")]
