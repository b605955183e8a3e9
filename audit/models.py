"""The audit log: every admin action on money, reviews, related parties and permissions, one row
each, append-only. PostgreSQL refuses UPDATE and DELETE of its rows (migration 0001)."""
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class AuditEntry(models.Model):
    # Who: the admin user. No foreign key constraint and no cascade: deleting a user must not touch
    # (and could not change) its entries; the name is copied.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                              related_name="+", db_constraint=False)
    actor_name = models.CharField(max_length=150)
    # What: a dotted verb (``wallet.top_up``, ``review.approve``) and the object it touched.
    action = models.CharField(max_length=60)
    target_type = models.CharField(max_length=60)
    target_id = models.CharField(max_length=60, blank=True)
    # Why, and the figures that matter (amounts, references, outcome).
    reason = models.CharField(max_length=2000, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    request_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target"),
                   models.Index(fields=["action", "created_at"], name="audit_action_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target_type}:{self.target_id}"
