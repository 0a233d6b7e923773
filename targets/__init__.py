"""The doors to targets: the only code that opens a connection to a PACS host or database.

One module per target protocol, each with one client used everywhere (the gateway, the
pam-admin pages, the rotation, the worker), one exception hierarchy (``targets.errors``) and
one set of messages:

- ``targets.ssh``: asyncssh. Host-key pinning, logins (password, key, Vault-signed
  certificate), commands, password changes; ``targets.ssh_blocking`` is its synchronous
  facade for callers that block.
- ``targets.postgres``: psycopg. A database account's login check.

HTTP (web consoles) comes next, as ``targets.http``.
"""
