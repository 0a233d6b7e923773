"""Make audit_auditevent append-only in the database: triggers refuse UPDATE and DELETE.

The model refuses too, but only for code that goes through it; these stop raw SQL
and other programs sharing the database. Someone who can drop a trigger can still
edit the table: the hash chain (``manage.py verify_audit``) is what detects that.
TRUNCATE is not refused, because test runs empty every table with it between
tests; verification detects it (the chain head no longer matches), and a
production database role should not hold the TRUNCATE privilege.
"""

from django.db import migrations

SQLITE_INSTALL = [
    "DROP TRIGGER IF EXISTS audit_auditevent_no_update",
    "DROP TRIGGER IF EXISTS audit_auditevent_no_delete",
    """CREATE TRIGGER audit_auditevent_no_update BEFORE UPDATE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER audit_auditevent_no_delete BEFORE DELETE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: DELETE refused'); END""",
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_auditevent_no_update",
    "DROP TRIGGER IF EXISTS audit_auditevent_no_delete",
]

POSTGRESQL_INSTALL = [
    # SQLSTATE 23000 (integrity_constraint_violation): Django raises IntegrityError, as on SQLite.
    """CREATE OR REPLACE FUNCTION audit_auditevent_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$""",
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent",
    """CREATE TRIGGER audit_auditevent_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_auditevent_append_only()""",
]
POSTGRESQL_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent",
    "DROP FUNCTION IF EXISTS audit_auditevent_append_only()",
]

STATEMENTS = {
    "sqlite": (SQLITE_INSTALL, SQLITE_REMOVE),
    "postgresql": (POSTGRESQL_INSTALL, POSTGRESQL_REMOVE),
}


def _statements(vendor, index):
    if vendor not in STATEMENTS:
        raise NotImplementedError(f"No append-only triggers for the {vendor} database: add them here.")
    return STATEMENTS[vendor][index]


def install_triggers(apps, schema_editor):
    for sql in _statements(schema_editor.connection.vendor, 0):
        schema_editor.execute(sql, params=None)


def remove_triggers(apps, schema_editor):
    for sql in _statements(schema_editor.connection.vendor, 1):
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_chain_head_row")]

    operations = [migrations.RunPython(install_triggers, remove_triggers)]
