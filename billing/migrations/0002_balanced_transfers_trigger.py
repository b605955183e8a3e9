"""PostgreSQL enforces that every transfer balances: at commit, the entries of each transfer that
was touched must sum to zero, or the whole transaction fails. (``%%`` because the SQL passes
through the driver's parameter formatting.)"""
from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION billing_transfer_balances() RETURNS trigger AS $$
DECLARE
    tid bigint := COALESCE(NEW.transfer_id, OLD.transfer_id);
    total numeric;
BEGIN
    SELECT COALESCE(SUM(amount), 0) INTO total FROM billing_entry WHERE transfer_id = tid;
    IF total <> 0 THEN
        RAISE EXCEPTION 'transfer %% does not balance (entries sum to %%)', tid, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER billing_entry_balanced
    AFTER INSERT OR UPDATE OR DELETE ON billing_entry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_transfer_balances();
"""
DROP = """
DROP TRIGGER IF EXISTS billing_entry_balanced ON billing_entry;
DROP FUNCTION IF EXISTS billing_transfer_balances();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # the laptop default (SQLite) relies on the service check
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
