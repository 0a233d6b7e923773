"""Session search (SessionText and its word index), legal holds, deleted recordings.

The word index is vendor-specific and made here, not by a model index: on PostgreSQL a GIN
index on ``search_vector``; on SQLite an FTS5 table (rowid = session id) that
``recordings.search`` keeps in step with ``recordings_sessiontext``.
"""

import django.contrib.postgres.search
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

# ascii: tokens are the words recordings.search extracted (lower case, split on spaces);
# non-ASCII letters stay in a token. detail=none: only "which rows hold the word" is asked.
SQLITE_INSTALL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS recordings_sessiontext_fts USING fts5("
    "words, detail=none, tokenize=\"ascii tokenchars '_'\")",
]
SQLITE_REMOVE = ["DROP TABLE IF EXISTS recordings_sessiontext_fts"]
POSTGRESQL_INSTALL = [
    "CREATE INDEX IF NOT EXISTS recordings_text_vector ON recordings_sessiontext USING gin (search_vector)",
]
POSTGRESQL_REMOVE = ["DROP INDEX IF EXISTS recordings_text_vector"]

STATEMENTS = {
    "sqlite": (SQLITE_INSTALL, SQLITE_REMOVE),
    "postgresql": (POSTGRESQL_INSTALL, POSTGRESQL_REMOVE),
}


def _run(schema_editor, index):
    vendor = schema_editor.connection.vendor
    if vendor not in STATEMENTS:
        raise NotImplementedError(f"No session search index for the {vendor} database: add it here.")
    for sql in STATEMENTS[vendor][index]:
        schema_editor.execute(sql, params=None)


def install_word_index(apps, schema_editor):
    _run(schema_editor, 0)


def remove_word_index(apps, schema_editor):
    _run(schema_editor, 1)


class Migration(migrations.Migration):
    dependencies = [
        ("access", "0003_target_forward_ports"),
        ("recordings", "0002_gateway_termination"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="LegalHold",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("reason", models.TextField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("released_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["-created_at", "-pk"],
            },
        ),
        migrations.CreateModel(
            name="SessionText",
            fields=[
                (
                    "session",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="search_text",
                        serialize=False,
                        to="recordings.session",
                    ),
                ),
                ("text", models.TextField(blank=True)),
                ("indexed_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "truncated",
                    models.BooleanField(
                        default=False, help_text="The text was cut at SESSIONS_SEARCH_MAX_CHARS."
                    ),
                ),
                ("all_words_indexed", models.BooleanField(default=True)),
                ("partial", models.BooleanField(default=False)),
                ("search_vector", django.contrib.postgres.search.SearchVectorField(blank=True, null=True)),
            ],
        ),
        migrations.AddField(
            model_name="recording",
            name="deleted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="session",
            index=models.Index(fields=["started_at", "id"], name="recordings_session_started"),
        ),
        migrations.AddIndex(
            model_name="session",
            index=models.Index(fields=["user", "started_at"], name="recordings_session_user"),
        ),
        migrations.AddIndex(
            model_name="session",
            index=models.Index(fields=["account", "started_at"], name="recordings_session_account"),
        ),
        migrations.AddIndex(
            model_name="session",
            index=models.Index(fields=["ended_at"], name="recordings_session_ended"),
        ),
        migrations.AddField(
            model_name="legalhold",
            name="created_by",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddField(
            model_name="legalhold",
            name="released_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="legalhold",
            name="session",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="legal_holds",
                to="recordings.session",
            ),
        ),
        migrations.AddField(
            model_name="legalhold",
            name="user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="legal_holds",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddIndex(
            model_name="sessiontext",
            index=models.Index(
                condition=models.Q(("all_words_indexed", False)),
                fields=["session"],
                name="recordings_text_unindexed",
            ),
        ),
        migrations.AddIndex(
            model_name="sessiontext",
            index=models.Index(
                condition=models.Q(("partial", True)), fields=["session"], name="recordings_text_partial"
            ),
        ),
        migrations.AddIndex(
            model_name="legalhold",
            index=models.Index(
                condition=models.Q(("released_at__isnull", True)),
                fields=["session"],
                name="recordings_hold_session",
            ),
        ),
        migrations.AddIndex(
            model_name="legalhold",
            index=models.Index(
                condition=models.Q(("released_at__isnull", True)),
                fields=["user"],
                name="recordings_hold_user",
            ),
        ),
        migrations.AddConstraint(
            model_name="legalhold",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("session__isnull", False), ("user__isnull", True)),
                    models.Q(("session__isnull", True), ("user__isnull", False)),
                    _connector="OR",
                ),
                name="recordings_legalhold_session_xor_user",
            ),
        ),
        migrations.RunPython(install_word_index, remove_word_index),
    ]
