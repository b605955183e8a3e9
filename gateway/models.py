"""The token gateway's records: supplier endpoints (where a token listing is served), per-key
limits, and usage discrepancies between what the exchange metered and what a supplier claimed.

Models hold data and database constraints only; behaviour lives in ``services`` and ``selectors``.
Nothing here is written per request: the gateway keeps its hot path in memory and Redis.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from billing.models import AMOUNT
from marketplace.models import Allocation, ApiKey, Listing, Organisation


class SupplierEndpoint(models.Model):
    """The OpenAI-compatible base URL serving a token listing, with the credential the exchange
    sends upstream. The credential is write-only: stored encrypted (``gateway.crypto``, a key
    from the environment, never the database), never returned by the API."""

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        UP = "up"
        DOWN = "down"

    listing = models.OneToOneField(Listing, on_delete=models.CASCADE, related_name="gateway_endpoint")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="gateway_endpoints")
    base_url = models.URLField(max_length=300, help_text="e.g. https://llm.example.cn/v1")
    upstream_model = models.CharField(max_length=200, blank=True,
                                      help_text="the model name the upstream expects; blank = the catalogue name")
    credential_encrypted = models.TextField(blank=True)
    health = models.CharField(max_length=8, choices=Health.choices, default=Health.UNKNOWN)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    # Gateway outcomes, folded in from Redis by the usage flusher.
    requests_served = models.PositiveBigIntegerField(default=0)
    requests_failed = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"endpoint {self.pk} for listing {self.listing_id}"


class KeyLimit(models.Model):
    """Per-key gateway limits; a key without a row gets the defaults in settings
    (``SANDUISAN_GATEWAY['REQUESTS_PER_MINUTE']`` and ``['TOKENS_PER_MINUTE']``)."""

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="gateway_limit")
    requests_per_minute = models.PositiveIntegerField()
    tokens_per_minute = models.PositiveBigIntegerField()

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(requests_per_minute__gte=1) & Q(tokens_per_minute__gte=1),
                                              name="gateway_keylimit_positive")]


class UsageDiscrepancy(models.Model):
    """An allocation served through the gateway whose supplier-reported usage differs from what
    the exchange metered by more than the tolerance. Supplier reports there are never billed;
    this is for operators to look at (dashboard, admin site)."""

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    allocation = models.OneToOneField(Allocation, on_delete=models.PROTECT, related_name="usage_discrepancy")
    supplier = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    metered_tokens = models.BigIntegerField()
    claimed_tokens = models.BigIntegerField()
    metered_amount = models.DecimalField(**AMOUNT)
    claimed_amount = models.DecimalField(**AMOUNT)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    flagged_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-flagged_at"]
        verbose_name_plural = "usage discrepancies"
