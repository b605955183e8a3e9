"""A hold's organisation checked once per statement instead of once per row.

``hold.organisation_id`` is the buyer whose wallet the hold reserves. Its foreign key ran one
deferred check per row at commit, and a round places 18,000 holds. Triggers now give the same
guarantee with one statement each, as ``marketplace/0013`` does for an allocation's supplier:

- after an INSERT, the organisations of the new holds exist and are locked ``FOR KEY SHARE``, in
  id order, until the transaction ends, so a concurrent delete waits and then fails;
- an organisation with holds cannot be deleted (under READ COMMITTED only, for the reason
  ``marketplace/0013`` gives);
- a hold keeps its organisation and allocation (an organisation keeps its id: marketplace 0013).

A TRUNCATE of organisations always takes the holds with it (organisation <- order <- allocation
<- hold are all foreign keys, and a TRUNCATE must include every table that references one it
empties). Django keeps ``on_delete=PROTECT`` in the ORM.
"""
from django.db import migrations, models

# The trigger functions are marketplace 0013's, shared with an allocation's supplier.
CREATE = """
CREATE TRIGGER hold_owner_check AFTER INSERT ON billing_hold
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION sanduisan_organisations_exist('organisation_id',
                                                   'a hold''s organisation must be an existing organisation');
CREATE TRIGGER organisation_holder_kept AFTER DELETE ON marketplace_organisation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION sanduisan_organisations_kept('billing_hold', 'organisation_id',
                                                  'an organisation with holds cannot be deleted');
CREATE TRIGGER hold_owner_fixed BEFORE UPDATE OF organisation_id, allocation_id ON billing_hold
    FOR EACH ROW WHEN (OLD.organisation_id <> NEW.organisation_id
                       OR OLD.allocation_id IS DISTINCT FROM NEW.allocation_id)
    EXECUTE FUNCTION sanduisan_column_fixed('a hold keeps its organisation and allocation');
"""

DROP = """
DROP TRIGGER hold_owner_check ON billing_hold;
DROP TRIGGER organisation_holder_kept ON marketplace_organisation;
DROP TRIGGER hold_owner_fixed ON billing_hold;
"""


def checks_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def checks_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_hold_reference_constraint"), ("marketplace", "0013_allocation_supplier_checked")]

    operations = [
        migrations.RunPython(checks_create, checks_drop),
        migrations.AlterField(
            model_name="hold", name="organisation",
            field=models.ForeignKey(db_constraint=False, on_delete=models.deletion.PROTECT, related_name="holds",
                                    to="marketplace.organisation"),
        ),
    ]
