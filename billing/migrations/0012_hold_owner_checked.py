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

CREATE = """
CREATE FUNCTION billing_hold_owner_check() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    missing bigint;
BEGIN
    EXECUTE $q$
    SELECT (SELECT count(DISTINCT n.organisation_id) FROM new_rows n) - (SELECT count(*) FROM (
        SELECT 1 FROM marketplace_organisation g WHERE g.id IN (SELECT n.organisation_id FROM new_rows n)
        ORDER BY g.id FOR KEY SHARE OF g) AS locked)
    $q$ INTO missing;
    IF missing > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'a hold''s organisation must be an existing organisation';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION billing_organisation_holder_kept() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    kept bigint;
BEGIN
    -- A foreign key looks for referencing rows with a snapshot newer than the transaction's; a
    -- trigger cannot. Under READ COMMITTED each statement here takes a new snapshot (and a delete
    -- waits for the key locks of inserts in flight), so it sees every committed row; under
    -- REPEATABLE READ or SERIALIZABLE it would miss rows committed after the transaction began.
    IF current_setting('transaction_isolation') <> 'read committed' AND EXISTS (SELECT 1 FROM old_rows) THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'organisations are deleted under READ COMMITTED only',
            HINT = 'the check that nothing still names them must see every committed row';
    END IF;
    EXECUTE $q$
    SELECT o.id FROM old_rows o WHERE EXISTS (SELECT 1 FROM billing_hold h WHERE h.organisation_id = o.id) LIMIT 1
    $q$ INTO kept;
    IF kept IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'an organisation with holds cannot be deleted', DETAIL = 'organisation ' || kept;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER hold_owner_check AFTER INSERT ON billing_hold
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_hold_owner_check();
CREATE TRIGGER organisation_holder_kept AFTER DELETE ON marketplace_organisation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION billing_organisation_holder_kept();
CREATE TRIGGER hold_owner_fixed BEFORE UPDATE OF organisation_id, allocation_id ON billing_hold
    FOR EACH ROW WHEN (OLD.organisation_id <> NEW.organisation_id
                       OR OLD.allocation_id IS DISTINCT FROM NEW.allocation_id)
    EXECUTE FUNCTION sanduisan_column_fixed('a hold keeps its organisation and allocation');
"""

DROP = """
DROP TRIGGER hold_owner_check ON billing_hold;
DROP TRIGGER organisation_holder_kept ON marketplace_organisation;
DROP TRIGGER hold_owner_fixed ON billing_hold;
DROP FUNCTION billing_hold_owner_check();
DROP FUNCTION billing_organisation_holder_kept();
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
