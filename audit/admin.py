"""The audit log is read-only in the admin site; changes to who may do what (users' groups and
permissions, groups' permissions) made here are themselves written to it."""
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group

from .models import AuditEntry
from .services import AdminActor, audit_record


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown in the admin site, never added, changed or deleted there."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_name", "action", "target_type", "target_id", "reason", "request_id"]
    list_filter = ["action", "target_type"]
    search_fields = ["actor_name", "target_id", "reason", "request_id"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]


def _actor(request) -> AdminActor:
    return AdminActor(user_id=request.user.pk, request_id=getattr(request, "request_id", ""))


def _grants(user) -> dict:
    return {"is_staff": user.is_staff, "is_superuser": user.is_superuser, "is_active": user.is_active,
            "groups": sorted(user.groups.values_list("name", flat=True)),
            "permissions": sorted(f"{p.content_type.app_label}.{p.codename}"
                                  for p in user.user_permissions.select_related("content_type"))}


class AuditedUserAdmin(UserAdmin):
    def save_related(self, request, form, formsets, change):
        before = _grants(form.instance) if change and form.instance.pk else {}
        super().save_related(request, form, formsets, change)
        after = _grants(form.instance)
        if after != before:
            audit_record(actor=_actor(request), action="permissions.user_change", target_type="user",
                         target_id=form.instance.pk, details={"username": form.instance.username,
                                                              "before": before, "after": after})

    def delete_model(self, request, obj):
        audit_record(actor=_actor(request), action="permissions.user_delete", target_type="user", target_id=obj.pk,
                     details={"username": obj.username, "before": _grants(obj)})
        super().delete_model(request, obj)


class AuditedGroupAdmin(GroupAdmin):
    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        group = form.instance
        audit_record(actor=_actor(request), action="permissions.group_change", target_type="group",
                     target_id=group.pk, details={"name": group.name, "permissions": sorted(
                         f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related(
                             "content_type"))})

    def delete_model(self, request, obj):
        audit_record(actor=_actor(request), action="permissions.group_delete", target_type="group",
                     target_id=obj.pk, details={"name": obj.name})
        super().delete_model(request, obj)


User = get_user_model()
for model, model_admin in ((User, AuditedUserAdmin), (Group, AuditedGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
