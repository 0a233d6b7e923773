"""Gateway sessions and their recordings: the session core every gateway protocol shares.

A GatewaySession is one connection relayed by a gateway (SSH today; web consoles, PostgreSQL
and the browser terminal next) for one user and account; each of its channels is recorded to
its own file (a Recording) of a kind (terminal, exec output, file transfer, forward, HTTP
request log, SQL statement log) under ``RECORDINGS_ROOT``, and the session's events go to one
more (the event log). ``recordings/recorder.py`` writes the files and finalises the rows;
``recordings/sessions.py`` opens, refuses and ends the sessions.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils import timezone


class GatewaySession(models.Model):
    """One gateway connection: who, to which account, under which grant, over which protocol,
    from where, how long.

    ``grant`` is empty for a session refused before a grant was found (no live grant,
    unknown account); every session that reached a target has one.
    """

    class EndReason(models.TextChoices):
        CLOSED = "closed", "Closed by the user or the target"
        GRANT_ENDED = "grant-ended", "The grant expired or was checked in"
        REVOKED = "revoked", "The grant was revoked"
        TERMINATED = "terminated", "Terminated by an approver or pam-admin"
        REFUSED = "refused", "Refused at connect"
        ERROR = "error", "Ended by an error (target, recording)"
        INTERRUPTED = "interrupted", "The gateway stopped without closing it"

    class Protocol(models.TextChoices):
        """The gateway that relayed the session: one gateway module per protocol."""

        SSH = "ssh", "SSH"
        HTTP = "http", "Web console (HTTP)"
        POSTGRES = "postgres", "PostgreSQL"
        BROWSER_TERMINAL = "browser-terminal", "Browser terminal"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="gateway_sessions"
    )
    grant = models.ForeignKey(
        "access.Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="sessions"
    )
    # The account's slug as asked for ("pacs01-root"), kept even if the account is renamed.
    account = models.CharField(max_length=63)
    protocol = models.CharField(max_length=20, choices=Protocol.choices, default=Protocol.SSH)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    gateway_node = models.CharField(max_length=255, blank=True, help_text="The gateway host that relayed it.")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=12, choices=EndReason.choices, blank=True)
    bytes_in = models.PositiveBigIntegerField(default=0, help_text="From the user to the target.")
    bytes_out = models.PositiveBigIntegerField(default=0, help_text="From the target to the user.")
    # Set by an approver or pam-admin from the web; the gateway relaying the session sees it
    # within a second and closes the session (end reason "terminated").
    terminate_requested_at = models.DateTimeField(null=True, blank=True)
    terminate_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    terminate_reason = models.TextField(blank=True)
    # What the gateway told the user when it refused or ended the session (no secret).
    end_message = models.TextField(blank=True)

    # Its audit rows name it as they did before the model was renamed (SIEM rules, the DICOM
    # audit messages' object URN and the audit search keep finding it).
    audit_object_type = "recordings.session"

    class Meta:
        # The table keeps the name it had when the model was called Session.
        db_table = "recordings_session"
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["gateway_node", "ended_at"]),
            models.Index(fields=["grant", "ended_at"]),
            # The search page: newest first, paged by keyset on (started_at, id), and its filters.
            models.Index(fields=["started_at", "id"], name="recordings_session_started"),
            models.Index(fields=["user", "started_at"], name="recordings_session_user"),
            models.Index(fields=["account", "started_at"], name="recordings_session_account"),
            models.Index(fields=["ended_at"], name="recordings_session_ended"),
        ]

    def __str__(self) -> str:
        return f"session {self.pk}: {self.user} on {self.account}"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None


class Recording(models.Model):
    """One recorded file of a session, with its sha256 and Vault transit signature.

    ``path`` is relative to ``RECORDINGS_ROOT`` and built from ids only. For ``exec``
    recordings ``path`` holds the raw output bytes and ``index_path`` its timing index;
    the signature covers both (see ``recordings.recorder.signed_manifest``). A recording
    with no ``finalized_at`` is being written, or its gateway died (``finalize_interrupted``).
    """

    class Kind(models.TextChoices):
        """What a channel carried, whatever the protocol (an SSH pty and a browser terminal are
        both ``terminal``); the session's own events are the ``events`` log."""

        TERMINAL = "terminal", "Terminal (asciicast v2)"
        EXEC = "exec", "Exec output (raw bytes + timing index)"
        FILE_TRANSFER = "file-transfer", "File transfer (path, size, sha256)"
        FORWARD = "forward", "Forwarded connection"
        HTTP_REQUESTS = "http-requests", "HTTP request log"
        SQL_STATEMENTS = "sql-statements", "SQL statement log"
        EVENTS = "events", "Session events (JSON lines)"

    session = models.ForeignKey(GatewaySession, on_delete=models.PROTECT, related_name="recordings")
    # The channel's number in its session (an SSH channel's own); empty for the events file.
    channel = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    path = models.CharField(max_length=255, unique=True)
    index_path = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    index_sha256 = models.CharField(max_length=64, blank=True)
    signature = models.TextField(blank=True, help_text="Vault transit signature of the manifest.")
    finalized_at = models.DateTimeField(null=True, blank=True)
    interrupted = models.BooleanField(
        default=False, help_text="Finalised after the gateway stopped or failed: the end may be missing."
    )
    # Set when the retention job deleted the file(s); the row, its sha256 and signature stay
    # as the record of what existed.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "channel", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "channel"],
                condition=models.Q(channel__isnull=False),
                name="recordings_one_file_per_channel",
            ),
            models.UniqueConstraint(
                fields=["session"],
                condition=models.Q(kind="events"),
                name="recordings_one_events_file_per_session",
            ),
        ]

    def __str__(self) -> str:
        where = "events" if self.channel is None else f"channel {self.channel}"
        return f"session {self.session_id} {where} ({self.kind})"


class SessionText(models.Model):
    """The searchable text of one ended session, extracted from its recordings.

    Built by ``recordings.search.session_index`` in the worker, seconds after the session
    ends (SESSIONS_INDEX_SECONDS): commands, file-transfer paths and forwarded host:port from
    the events file, then the terminal output (as ``recordings.terminal`` reads it: line edits
    applied, escape sequences dropped) and text-like exec output, at most
    ``SESSIONS_SEARCH_MAX_CHARS`` characters (``truncated`` says it was cut).

    Words are matched through an index of the text's distinct words: on PostgreSQL
    ``search_vector`` (GIN), on SQLite the FTS5 table ``recordings_sessiontext_fts`` (rowid =
    session id), both filled by the service from the same word list. A text with more
    distinct words than that index takes (a tsvector holds at most 1 MB) has
    ``all_words_indexed`` false and is searched by its text instead.
    """

    session = models.OneToOneField(
        GatewaySession, primary_key=True, on_delete=models.CASCADE, related_name="search_text"
    )
    text = models.TextField(blank=True)
    indexed_at = models.DateTimeField(default=timezone.now)
    truncated = models.BooleanField(default=False, help_text="The text was cut at SESSIONS_SEARCH_MAX_CHARS.")
    all_words_indexed = models.BooleanField(default=True)
    # A recording was still being written when the text was extracted: done again once sealed.
    partial = models.BooleanField(default=False)
    # PostgreSQL only (the GIN index is made by the migration there); always empty on SQLite.
    search_vector = SearchVectorField(null=True, blank=True)

    class Meta:
        indexes = [
            # Few rows: the texts searched without the word index, and those to redo.
            models.Index(
                fields=["session"],
                condition=models.Q(all_words_indexed=False),
                name="recordings_text_unindexed",
            ),
            models.Index(
                fields=["session"], condition=models.Q(partial=True), name="recordings_text_partial"
            ),
        ]

    def __str__(self) -> str:
        return f"text of session {self.session_id} ({len(self.text)} characters)"


class LegalHold(models.Model):
    """Keeps recordings past their retention: of one session, or of every session of one user.

    Placed and released by auditors and pam-admins (``recordings.retention``); a hold is
    active until ``released_at`` is set. The retention job never deletes the files of a
    session that has an active hold on it or on its user. Rows are kept after release.
    """

    session = models.ForeignKey(
        GatewaySession, null=True, blank=True, on_delete=models.PROTECT, related_name="legal_holds"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="legal_holds"
    )
    reason = models.TextField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(session__isnull=False, user__isnull=True)
                | models.Q(session__isnull=True, user__isnull=False),
                name="recordings_legalhold_session_xor_user",
            ),
        ]
        indexes = [
            models.Index(
                fields=["session"],
                condition=models.Q(released_at__isnull=True),
                name="recordings_hold_session",
            ),
            models.Index(
                fields=["user"], condition=models.Q(released_at__isnull=True), name="recordings_hold_user"
            ),
        ]

    def __str__(self) -> str:
        what = f"session {self.session_id}" if self.session_id else f"user {self.user}"
        return f"legal hold on {what}"

    @property
    def is_active(self) -> bool:
        return self.released_at is None
