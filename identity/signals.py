"""Signal receivers of the identity app.

Lockouts are audited where they happen (identity.lockout.failure_record), in the
transaction that locks: no receiver is needed for them.
"""
