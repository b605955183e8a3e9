"""The double-entry ledger. Every transfer's entries sum to zero, enforced by PostgreSQL (a
deferred constraint trigger, see migration 0002), not only in Python; accounts that may not go
into overdraft carry a CHECK constraint on their balance."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from marketplace.models import Organisation

AMOUNT = {"max_digits": 30, "decimal_places": 12}


class Account(models.Model):
    class Kind(models.TextChoices):
        BUYER_WALLET = "buyer_wallet"  # available to spend
        BUYER_HELD = "buyer_held"  # held for matched orders
        SUPPLIER_PAYABLE = "supplier_payable"  # owed to the supplier
        # owed BY the supplier, as a negative balance: what it had to give back beyond its payable
        # (a charge reversed after a payout, a service credit it owes); its next earnings repay it
        SUPPLIER_RECEIVABLE = "supplier_receivable"
        PLATFORM_COMMISSION = "platform_commission"
        PLATFORM_ROUNDING = "platform_rounding"
        PLATFORM_CREDITS = "platform_credits"  # unused since suppliers pay service credits (kept for old rows)
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
            models.CheckConstraint(condition=~Q(kind="supplier_receivable") | Q(balance__lte=0),
                                   name="account_receivable_never_positive"),
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

    # Checked by triggers once per statement instead of a key per row (migration 0012): an
    # existing organisation, locked like a key, never deleted or changed under the hold.
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="holds", db_constraint=False)
    # unique by a constraint (below), not unique=True: it is looked up by equality only, and
    # unique=True adds a pattern-matching twin index every hold insert would also write
    reference = models.CharField(max_length=200, help_text="e.g. allocation:123")
    # The allocation whose maximum cost this hold reserves (none for a hold placed by hand).
    allocation = models.OneToOneField("marketplace.Allocation", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="hold")
    amount = models.DecimalField(**AMOUNT)
    # Captured so far: settlement captures usage in steps while the hold stays pending.
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
            models.UniqueConstraint(fields=["reference"], name="hold_reference_unique"),
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
    # The settlement transfer that charged this event (null until settled).
    settled_transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "event_id"], name="usageevent_unique_per_org"),
            models.CheckConstraint(condition=Q(input_hit_tokens__gte=0) & Q(input_miss_tokens__gte=0)
                                   & Q(output_tokens__gte=0), name="usageevent_counts_nonnegative"),
        ]
        indexes = [models.Index(fields=["allocation", "settled"], name="usageevent_alloc_settled")]


class UsageClaim(models.Model):
    """Token usage a supplier reported for an allocation the exchange meters itself (served
    through the token gateway). Kept for reconciliation only: never rated into a charge."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    event_id = models.CharField(max_length=200)
    allocation = models.ForeignKey("marketplace.Allocation", on_delete=models.PROTECT, related_name="usage_claims")
    occurred_at = models.DateTimeField()
    input_hit_tokens = models.BigIntegerField()
    input_miss_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    amount = models.DecimalField(**AMOUNT)  # what it would have cost, for comparison
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "event_id"], name="usageclaim_unique_per_org"),
            models.CheckConstraint(condition=Q(input_hit_tokens__gte=0) & Q(input_miss_tokens__gte=0)
                                   & Q(output_tokens__gte=0), name="usageclaim_counts_nonnegative"),
        ]


class AllocationMeter(models.Model):
    """Card-hour metering of one allocation: started and stopped by its supplier, kept alive by
    heartbeats. Billable time is the time between heartbeats (a silence longer than the grace
    period counts only the grace), from ``started_at`` to the stop, never past the end of the
    allocation's service; in whole minutes.
    ``billed_minutes`` / ``billed_amount`` are what settlement has already charged (cumulative)."""

    allocation = models.OneToOneField("marketplace.Allocation", on_delete=models.PROTECT, related_name="meter")
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Use folded in up to the last heartbeat (a silence longer than the grace counts only the grace).
    accumulated_seconds = models.PositiveIntegerField(default=0)
    billed_minutes = models.PositiveIntegerField(default=0)
    billed_amount = models.DecimalField(default=Decimal(0), **AMOUNT)
    updated_at = models.DateTimeField(auto_now=True)


class Invoice(models.Model):
    """A buyer's invoice or a supplier's statement for a period. Issued final in one transaction
    and immutable from then on (PostgreSQL refuses any UPDATE or DELETE, migration 0006)."""

    class Kind(models.TextChoices):
        INVOICE = "invoice"  # to a buyer: what it was charged
        STATEMENT = "statement"  # to a supplier: what it earned, less commission

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    number = models.CharField(max_length=40, unique=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3, default="CNY")
    subtotal = models.DecimalField(**AMOUNT)  # exact sum of the lines' amounts
    commission = models.DecimalField(default=Decimal(0), **AMOUNT)  # statements: the platform's share
    total = models.DecimalField(max_digits=20, decimal_places=2)  # what is due or paid, to the fen
    rounding = models.DecimalField(**AMOUNT)  # exact minus total, booked to the rounding account
    figures = models.JSONField(default=dict, blank=True)  # statements: utilisation, reliability
    issued_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(period_end__gt=models.F("period_start")), name="invoice_period_positive"),
        ]

    def __str__(self) -> str:
        return self.number


class Charge(models.Model):
    """One priced piece of delivered service (or a credit or refund, negative), booked by one
    ledger transfer. Invoices group a buyer's charges; statements group a supplier's."""

    class Kind(models.TextChoices):
        CARD_HOURS = "card_hours"
        INPUT_HIT = "input_hit_tokens"
        INPUT_MISS = "input_miss_tokens"
        OUTPUT = "output_tokens"
        SERVICE_CREDIT = "service_credit"
        REFUND = "refund"

    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="charges")
    supplier = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="earnings")
    order = models.ForeignKey("marketplace.Order", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    allocation = models.ForeignKey("marketplace.Allocation", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="charges")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    quantity = models.DecimalField(max_digits=24, decimal_places=6)  # card-hours or tokens
    unit_price = models.DecimalField(max_digits=18, decimal_places=6)  # per card-hour or per million tokens
    amount = models.DecimalField(**AMOUNT)  # to the buyer; negative for credits and refunds
    commission = models.DecimalField(default=Decimal(0), **AMOUNT)  # the platform's part of amount
    usage_from = models.DateTimeField()
    usage_to = models.DateTimeField()
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="charges")
    invoice = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="charges")
    statement = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="statement_charges")
    memo = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["buyer", "invoice"], name="charge_buyer_invoice"),
                   models.Index(fields=["supplier", "statement"], name="charge_supplier_statement")]


class InvoiceLine(models.Model):
    """One order and usage kind on an invoice or statement; ``adjustment`` marks usage from an
    earlier period that arrived after that period's invoice was issued."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    order = models.ForeignKey("marketplace.Order", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20, choices=Charge.Kind.choices)
    adjustment = models.BooleanField(default=False)
    quantity = models.DecimalField(max_digits=24, decimal_places=6)
    amount = models.DecimalField(**AMOUNT)
    commission = models.DecimalField(default=Decimal(0), **AMOUNT)
    description = models.CharField(max_length=300)

    class Meta:
        ordering = ["id"]


class MoneyApproval(models.Model):
    """A top-up or refund above ``SANDUISAN["SECOND_APPROVAL_ABOVE"]``: requested by one admin,
    carried out only when a second, different admin with the same permission approves it.
    ``(kind, organisation, reference)`` is unique: the reference is the owner's, as on the
    operation itself. Its Meta also holds the money permissions every admin action checks."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up"
        REFUND = "refund"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    # Whose money: the wallet topped up, or the buyer of the refunded charge.
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    charge = models.ForeignKey("Charge", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(**AMOUNT)
    reference = models.CharField(max_length=150)
    reason = models.CharField(max_length=250, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=2000, blank=True)
    # What approving produced: the top-up transfer or the refund charge.
    transfer = models.ForeignKey(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "organisation", "reference"], name="moneyapproval_unique_ref"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="moneyapproval_amount_positive"),
            # The database itself refuses a request approved by its own requester.
            models.CheckConstraint(condition=Q(decided_by__isnull=True) | ~Q(decided_by=models.F("requested_by")),
                                   name="moneyapproval_second_admin"),
        ]
        permissions = [("top_up_wallet", "Can top up wallets"), ("pay_out", "Can pay suppliers out"),
                       ("refund_charge", "Can refund charges"), ("resolve_dispute", "Can resolve disputes")]


class TokenUsageTotal(models.Model):
    """What a token allocation's accepted usage events add up to, kept by metering as it accepts
    them (one row per allocation, locked by each batch that reports on it): the bound checks
    against ``max_spend`` and the endpoint's capacity read this row, never a sum over events.
    Settlement never locks it."""

    allocation = models.OneToOneField("marketplace.Allocation", primary_key=True, on_delete=models.PROTECT,
                                      related_name="token_usage")
    amount = models.DecimalField(default=Decimal(0), **AMOUNT)
    tokens = models.BigIntegerField(default=0)
    # The latest occurred_at accepted: capacity is judged at the latest moment reported, so
    # events reported out of order are not refused for it.
    latest_occurred_at = models.DateTimeField(null=True, blank=True)
    refused_over_budget = models.BigIntegerField(default=0)
    refused_implausible = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gte=0) & Q(tokens__gte=0),
                                              name="tokenusagetotal_nonnegative")]


class Dispute(models.Model):
    """A buyer contests (part of) a charge within the dispute window. While it is open (or its
    refund waits for a second admin) the supplier's share of the amount is withheld from its
    payouts; an admin with ``billing.resolve_dispute`` refunds it (in full or part) or rejects it.
    ``(buyer, reference)`` is unique: a buyer's reference names one dispute."""

    class Status(models.TextChoices):
        OPEN = "open"
        AWAITING_APPROVAL = "awaiting_approval"  # a refund above the threshold waits for a second admin
        REFUNDED = "refunded"
        REJECTED = "rejected"

    WITHHOLDING = (Status.OPEN, Status.AWAITING_APPROVAL)

    charge = models.ForeignKey(Charge, on_delete=models.PROTECT, related_name="disputes")
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="disputes_raised")
    supplier = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="disputes_against")
    reference = models.CharField(max_length=150)
    amount = models.DecimalField(**AMOUNT)  # disputed, to the buyer
    withheld = models.DecimalField(**AMOUNT)  # the supplier's share of it, kept from payouts while open
    reason = models.CharField(max_length=2000)
    status = models.CharField(max_length=18, choices=Status.choices, default=Status.OPEN)
    refunded = models.DecimalField(default=Decimal(0), **AMOUNT)
    refund = models.ForeignKey(Charge, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    approval = models.ForeignKey(MoneyApproval, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_reason = models.CharField(max_length=2000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "reference"], name="dispute_unique_ref_per_buyer"),
            # One dispute at a time per charge.
            models.UniqueConstraint(fields=["charge"], condition=Q(status__in=["open", "awaiting_approval"]),
                                    name="dispute_one_open_per_charge"),
            models.CheckConstraint(condition=Q(amount__gt=0) & Q(withheld__gte=0) & Q(withheld__lte=F("amount"))
                                   & Q(refunded__gte=0) & Q(refunded__lte=F("amount")), name="dispute_amounts_valid"),
        ]
