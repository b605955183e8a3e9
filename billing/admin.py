from django.contrib import admin

from audit.admin import ReadOnlyAdmin

from .models import (Account, AllocationMeter, Charge, Dispute, Entry, Hold, Invoice, InvoiceLine, MoneyApproval,
                     Transfer, UsageEvent)


class ReadOnly(ReadOnlyAdmin):
    """Money moves only through billing.services.transfer_post; the admin shows, never edits."""


@admin.register(Account)
class AccountAdmin(ReadOnly):
    list_display = ["id", "organisation", "kind", "currency", "balance", "allow_negative"]
    list_filter = ["kind", "currency"]
    search_fields = ["organisation__name"]


class EntryInline(admin.TabularInline):
    model = Entry
    extra = 0
    can_delete = False
    readonly_fields = ["account", "amount"]


@admin.register(Transfer)
class TransferAdmin(ReadOnly):
    list_display = ["id", "idempotency_id", "kind", "currency", "memo", "created_at"]
    list_filter = ["kind"]
    search_fields = ["idempotency_id", "memo"]
    inlines = [EntryInline]


@admin.register(Entry)
class EntryAdmin(ReadOnly):
    list_display = ["id", "transfer", "account", "amount"]
    raw_id_fields = ["transfer", "account"]


@admin.register(Hold)
class HoldAdmin(ReadOnly):
    list_display = ["id", "organisation", "reference", "amount", "posted_amount", "status", "expires_at"]
    list_filter = ["status"]
    search_fields = ["reference", "organisation__name"]


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnly):
    list_display = ["id", "organisation", "event_id", "allocation", "occurred_at", "input_hit_tokens",
                    "input_miss_tokens", "output_tokens", "amount", "settled"]
    list_filter = ["settled"]
    search_fields = ["event_id"]
    raw_id_fields = ["allocation"]


@admin.register(Charge)
class ChargeAdmin(ReadOnly):
    list_display = ["id", "buyer", "supplier", "order", "kind", "quantity", "amount", "commission", "usage_to",
                    "invoice", "statement"]
    list_filter = ["kind"]
    search_fields = ["buyer__name", "supplier__name", "memo"]
    raw_id_fields = ["order", "allocation", "transfer", "invoice", "statement"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = ["order", "kind", "adjustment", "quantity", "amount", "commission", "description"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnly):
    list_display = ["number", "organisation", "kind", "period_start", "period_end", "total", "issued_at"]
    list_filter = ["kind"]
    search_fields = ["number", "organisation__name"]
    inlines = [InvoiceLineInline]


@admin.register(AllocationMeter)
class AllocationMeterAdmin(ReadOnly):
    list_display = ["allocation", "started_at", "last_heartbeat_at", "stopped_at", "billed_minutes", "billed_amount"]
    raw_id_fields = ["allocation"]


@admin.register(MoneyApproval)
class MoneyApprovalAdmin(ReadOnly):
    """Decided through the API (a second admin approves); shown here."""
    list_display = ["id", "kind", "organisation", "amount", "reference", "status", "requested_by", "decided_by",
                    "created_at"]
    list_filter = ["kind", "status"]


@admin.register(Dispute)
class DisputeAdmin(ReadOnly):
    """Resolved through the API by an admin with billing.resolve_dispute; shown here."""
    list_display = ["id", "charge", "buyer", "supplier", "amount", "withheld", "status", "refunded", "created_at"]
    list_filter = ["status"]
