from django.contrib import admin

from .models import KeyLimit, SupplierEndpoint, UsageDiscrepancy


@admin.register(SupplierEndpoint)
class SupplierEndpointAdmin(admin.ModelAdmin):
    list_display = ["id", "listing", "organisation", "base_url", "health", "last_checked_at", "requests_served",
                    "requests_failed"]
    list_filter = ["health"]
    exclude = ["credential_encrypted"]  # write-only, even for admins
    readonly_fields = ["requests_served", "requests_failed", "last_checked_at", "last_error"]


@admin.register(KeyLimit)
class KeyLimitAdmin(admin.ModelAdmin):
    list_display = ["api_key", "requests_per_minute", "tokens_per_minute"]


@admin.register(UsageDiscrepancy)
class UsageDiscrepancyAdmin(admin.ModelAdmin):
    list_display = ["allocation", "supplier", "metered_tokens", "claimed_tokens", "metered_amount", "claimed_amount",
                    "status", "flagged_at"]
    list_filter = ["status"]
