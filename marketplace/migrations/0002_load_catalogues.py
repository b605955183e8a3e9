from django.db import migrations


def load(apps, schema_editor):
    from marketplace.catalogue import load_catalogues

    load_catalogues(Region=apps.get_model("marketplace", "Region"),
                    ChipType=apps.get_model("marketplace", "ChipType"),
                    AIModel=apps.get_model("marketplace", "AIModel"))


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
