"""The audit trail is not in the Django admin.

It is read on the auditors' pages (audit:events, audit:verify, the exports), where each
reading is itself an audit event; the admin is for pam-admins, who are not auditors, and
could read it there unrecorded.
"""
