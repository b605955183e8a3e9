"""The admin groups: ``finance`` (top-ups, payouts, refunds, disputes; reads the audit log),
``reviewer`` (flagged matches) and ``operations`` (node failure on a supplier's behalf). Staff
users get nothing from ``is_staff`` alone: an administrator adds them to a group."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = {
    "finance": [("billing", "top_up_wallet"), ("billing", "pay_out"), ("billing", "refund_charge"),
                ("billing", "resolve_dispute"), ("audit", "view_auditentry")],
    "reviewer": [("matching", "decide_review"), ("audit", "view_auditentry")],
    "operations": [("matching", "fail_node"), ("audit", "view_auditentry")],
}


def forwards(apps, schema_editor):
    # Permissions are normally created after migrate; create them now so the groups can hold them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*[Permission.objects.get(content_type__app_label=app, codename=codename)
                                for app, codename in wanted])


def backwards(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_i9b_audit_log"),
        ("billing", "0007_i9b_money_approval"),
        ("matching", "0002_i9b_permissions"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
