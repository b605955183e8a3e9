"""Matching rounds, admin review of flagged matches, and supplier failures."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from marketplace.models import Allocation, Listing, Node, Order


class MatchRound(models.Model):
    """One run of the engine over one bucket. ``round_id`` makes a retried task a no-op."""

    class Status(models.TextChoices):
        COMMITTED = "committed"
        EMPTY = "empty"  # nothing to match

    round_id = models.CharField(max_length=100, unique=True)
    bucket = models.CharField(max_length=80)
    status = models.CharField(max_length=10, choices=Status.choices)
    price_rule = models.CharField(max_length=40)
    orders_considered = models.PositiveIntegerField(default=0)
    listings_considered = models.PositiveIntegerField(default=0)
    matches = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    skipped_stale = models.PositiveIntegerField(default=0, help_text="engine matches the database no longer allowed")
    welfare = models.DecimalField(max_digits=20, decimal_places=6, default=Decimal(0))
    load_ms = models.PositiveIntegerField(default=0)
    engine_ms = models.PositiveIntegerField(default=0)
    persist_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.round_id


class ReviewPolicy(models.Model):
    """Which matches wait for an admin. The row with the highest id is in force."""

    enabled = models.BooleanField(default=True)
    value_threshold = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("50000"),
                                          help_text="flag matches worth more than this (CNY, price x card-hours)")
    min_supplier_reliability = models.DecimalField(max_digits=4, decimal_places=3, default=Decimal("0.900"),
                                                   help_text="flag matches with suppliers below this reliability")
    flag_outside_buyer_country = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "review policy"

    def __str__(self) -> str:
        return f"review policy (> {self.value_threshold} CNY, reliability < {self.min_supplier_reliability})"


class MatchReview(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        WITHDRAWN = "withdrawn"  # the order was cancelled or the node failed before a decision
        EXPIRED = "expired"  # nobody decided before the allocation would start (or the review timeout)

    allocation = models.OneToOneField(Allocation, on_delete=models.PROTECT, related_name="review")
    reasons = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"], name="matchreview_status")]
        constraints = [
            models.CheckConstraint(condition=Q(status="pending") | Q(decided_at__isnull=False),
                                   name="matchreview_decided_has_time"),
        ]
        # Checked by every admin decision (API, admin site, dashboard): is_staff alone is not enough.
        permissions = [("decide_review", "Can approve or reject flagged matches"),
                       ("fail_node", "Can mark a supplier's node failed")]

    def __str__(self) -> str:
        return f"review of allocation {self.allocation_id} ({self.status})"


class RejectedPairing(models.Model):
    """An admin rejected this order on this listing; the engine never proposes the pair again."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="+")
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="+")
    review = models.ForeignKey(MatchReview, on_delete=models.CASCADE, related_name="rejected_pairings")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["order", "listing"], name="rejectedpairing_unique")]


class NodeFailure(models.Model):
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="failures")
    failed_hour = models.IntegerField(help_text="hour index in which the node failed; it delivered nothing from here")
    reason = models.TextField(blank=True)
    reported_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reported_by_supplier = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class FailureImpact(models.Model):
    """What one failure did to one allocation; billing turns these into service credits."""

    failure = models.ForeignKey(NodeFailure, on_delete=models.PROTECT, related_name="impacts")
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="failure_impacts")
    hours_lost = models.PositiveIntegerField()
    cards = models.PositiveSmallIntegerField()
    started = models.BooleanField(help_text="the allocation had started when the node failed")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["failure", "allocation"], name="failureimpact_unique")]
