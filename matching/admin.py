from django import forms
from django.contrib import admin, messages

from config.errors import ApplicationError
from lifecycle import admin_services
from marketplace.actors import admin_actor_for_request
from marketplace.admin import NodeAdmin

from .models import FailureImpact, MatchReview, MatchRound, NodeFailure, RejectedPairing, ReviewPolicy


class ReviewDecisionForm(forms.ModelForm):
    decision = forms.ChoiceField(choices=[("", "---"), ("approve", "Approve"), ("reject", "Reject")], required=False)
    reason = forms.CharField(widget=forms.Textarea, required=False, help_text="required to reject")

    class Meta:
        model = MatchReview
        fields = []

    def clean(self):
        data = super().clean()
        if data.get("decision") == "reject" and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the match is rejected.")
        return data


@admin.register(MatchReview)
class MatchReviewAdmin(admin.ModelAdmin):
    """Pending matches are decided here (or through the API); both go through the same services,
    so the decision, who made it and why are recorded either way."""

    form = ReviewDecisionForm
    list_display = ["id", "allocation", "status", "flag_codes", "decided_by", "decided_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["allocation__order__id", "allocation__supplier__name"]
    readonly_fields = ["allocation", "reasons", "status", "decided_by", "decided_at", "decision_reason", "created_at"]
    actions = ["approve_selected"]

    def get_fields(self, request, obj=None):
        fields = list(self.readonly_fields)
        if obj is not None and obj.status == MatchReview.Status.PENDING:
            fields += ["decision", "reason"]
        return fields

    @admin.display(description="flags")
    def flag_codes(self, review):
        return ", ".join(r.get("code", "") for r in review.reasons)

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        decision = form.cleaned_data.get("decision")
        reason = form.cleaned_data.get("reason", "")
        try:
            if decision:
                admin_services.review_decide(actor=admin_actor_for_request(request), review_id=obj.pk,
                                             decision=decision, reason=reason)
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)

    @admin.action(description="Approve selected pending matches")
    def approve_selected(self, request, queryset):
        done = 0
        for review in queryset.filter(status=MatchReview.Status.PENDING):
            try:
                admin_services.review_decide(actor=admin_actor_for_request(request), review_id=review.pk,
                                             decision="approve", reason="approved from the review list")
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"review {review.pk}: {exc.message}", level=messages.WARNING)
        self.message_user(request, f"Approved {done} match(es).")


@admin.register(ReviewPolicy)
class ReviewPolicyAdmin(admin.ModelAdmin):
    list_display = ["id", "enabled", "value_threshold", "min_supplier_reliability", "flag_outside_buyer_country",
                    "updated_at"]


@admin.register(MatchRound)
class MatchRoundAdmin(admin.ModelAdmin):
    list_display = ["round_id", "bucket", "status", "orders_considered", "listings_considered", "matches", "flagged",
                    "skipped_stale", "welfare", "load_ms", "engine_ms", "persist_ms", "created_at"]
    list_filter = ["status", "bucket"]
    search_fields = ["round_id"]

    def has_change_permission(self, request, obj=None):
        return False


class FailureImpactInline(admin.TabularInline):
    model = FailureImpact
    extra = 0
    readonly_fields = ["allocation", "hours_lost", "cards", "started"]
    can_delete = False


@admin.register(NodeFailure)
class NodeFailureAdmin(admin.ModelAdmin):
    list_display = ["id", "node", "failed_hour", "reported_by_supplier", "reported_by", "created_at"]
    list_filter = ["reported_by_supplier"]
    search_fields = ["node__name", "reason"]
    inlines = [FailureImpactInline]
    readonly_fields = ["node", "failed_hour", "reason", "reported_by", "reported_by_supplier", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(RejectedPairing)
class RejectedPairingAdmin(admin.ModelAdmin):
    list_display = ["order", "listing", "review"]
    raw_id_fields = ["order", "listing", "review"]


@admin.action(description="Mark failed and re-match their unfinished work")
def mark_failed(modeladmin, request, queryset):
    for node in queryset:
        try:
            failure = admin_services.node_fail_by_admin(actor=admin_actor_for_request(request), node_id=node.pk,
                                                        reason="marked failed by a platform admin")
            modeladmin.message_user(request, f"{node.name}: {failure.impacts.count()} allocation(s) re-matched.")
        except ApplicationError as exc:
            modeladmin.message_user(request, f"{node.name}: {exc.message}", level=messages.WARNING)


NodeAdmin.actions = [*NodeAdmin.actions, mark_failed]
