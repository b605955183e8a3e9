from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from audit.services import AdminActor
from lifecycle.admin_services import related_party_mark_by_admin, related_party_unmark_by_admin

from . import models


@admin.register(models.Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name_en", "name_zh", "kind", "parent", "hub", "lat", "lon"]
    list_filter = ["kind", "hub"]
    search_fields = ["code", "name_en", "name_zh"]


@admin.register(models.ChipType)
class ChipTypeAdmin(admin.ModelAdmin):
    list_display = ["code", "vendor", "model", "memory_gb", "bf16_tflops", "domestic"]
    list_filter = ["vendor", "domestic"]
    search_fields = ["code", "vendor", "model"]


@admin.register(models.AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = ["name", "params_billion", "native_precision", "architecture"]
    list_filter = ["native_precision", "architecture"]
    search_fields = ["name"]


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(models.Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_supplier", "is_buyer", "home_region", "created_at"]
    list_filter = ["is_supplier", "is_buyer"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


class RelatedPartyForm(forms.ModelForm):
    class Meta:
        model = models.RelatedParty
        fields = ["organisation_a", "organisation_b", "reason"]

    def clean(self):
        data = super().clean()
        a, b = data.get("organisation_a"), data.get("organisation_b")
        if a and b:
            if a == b:
                raise ValidationError("An organisation is always related to itself; pick another.")
            if a.pk > b.pk:  # symmetric: stored lower id first, whichever way the admin entered it
                data["organisation_a"], data["organisation_b"] = b, a
        return data


@admin.register(models.RelatedParty)
class RelatedPartyAdmin(admin.ModelAdmin):
    """Organisations that must never trade with each other (either way): rounds, reservations and
    token matching skip every pair of them, as they skip an organisation trading with itself."""

    form = RelatedPartyForm
    list_display = ["organisation_a", "organisation_b", "reason", "created_by", "created_at"]
    search_fields = ["organisation_a__name", "organisation_b__name", "reason"]
    list_select_related = ["organisation_a", "organisation_b", "created_by"]

    def get_readonly_fields(self, request, obj=None):
        return ["organisation_a", "organisation_b", "reason", "created_by", "created_at"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            return
        party = related_party_mark_by_admin(actor=_actor(request), reason=obj.reason,
                                            organisation_ids=(obj.organisation_a_id, obj.organisation_b_id))
        obj.pk = party.pk

    def delete_model(self, request, obj):
        related_party_unmark_by_admin(actor=_actor(request), party_id=obj.pk, reason="removed in the admin site")

    def delete_queryset(self, request, queryset):
        for party_id in queryset.values_list("pk", flat=True):
            related_party_unmark_by_admin(actor=_actor(request), party_id=party_id,
                                          reason="removed in the admin site")


def _actor(request) -> AdminActor:
    return AdminActor(user_id=request.user.pk, request_id=getattr(request, "request_id", ""))


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organisation", "role"]
    list_filter = ["role"]
    search_fields = ["user__username", "organisation__name"]


@admin.register(models.ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued through the API or ``manage.py seed_demo`` (the secret is shown once);
    here admins can see and revoke them."""

    list_display = ["prefix", "name", "organisation", "role", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", "revoked_at"]
    search_fields = ["prefix", "name", "organisation__name"]
    readonly_fields = ["prefix", "hashed_secret", "created_at", "last_used_at", "created_by"]

    def has_add_permission(self, request):
        return False


@admin.register(models.Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "organisation", "chip", "card_count", "region", "interconnect", "fabric_id", "status"]
    list_filter = ["status", "interconnect", "chip", "region__hub"]
    search_fields = ["name", "organisation__name", "fabric_id"]
    list_select_related = ["organisation", "chip", "region"]


@admin.register(models.Listing)
class ListingAdmin(admin.ModelAdmin):
    list_display = ["id", "organisation", "node", "cards", "start", "end", "ask_per_card_hour", "token_model", "status"]
    list_filter = ["status", "node__chip", "token_model"]
    search_fields = ["node__name", "organisation__name"]
    list_select_related = ["organisation", "node", "node__chip", "token_model"]
    raw_id_fields = ["node"]


@admin.register(models.ListingHour)
class ListingHourAdmin(admin.ModelAdmin):
    list_display = ["listing", "node", "hour", "cards_offered", "cards_sold"]
    raw_id_fields = ["listing", "node"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # capacity moves only through services


class OrderChipOptionInline(admin.TabularInline):
    model = models.OrderChipOption
    extra = 0


@admin.register(models.Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "organisation", "kind", "status", "cards", "duration_hours", "max_price_per_card_hour",
                    "token_model", "region_policy", "created_at"]
    list_filter = ["kind", "status", "region_policy", "placement"]
    search_fields = ["id", "organisation__name"]
    list_select_related = ["organisation", "token_model"]
    inlines = [OrderChipOptionInline]
    readonly_fields = ["status"]  # transitions go through services


class AllocationPartInline(admin.TabularInline):
    model = models.AllocationPart
    extra = 0
    raw_id_fields = ["listing", "node"]


@admin.register(models.Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = ["id", "order", "supplier", "status", "start_hour", "end_hour", "cards", "price_per_card_hour",
                    "price_rule"]
    list_filter = ["status", "price_rule"]
    search_fields = ["id", "order__id", "supplier__name", "round_id"]
    raw_id_fields = ["order"]
    inlines = [AllocationPartInline]


@admin.register(models.IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["organisation", "scope", "key", "response_status", "created_at"]
    search_fields = ["key"]
