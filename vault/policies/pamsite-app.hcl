# pamsite-app: the policy of the pamsite web app, SSH gateway and worker (AppRole "pamsite").
#
# Least privilege, on pamsite's own mounts only: read and write pamsite's KV v2 secrets
# (and destroy the show-once stashes of database grants), configure the database
# connections, database roles and per-account SSH roles that pam-admins set up in the
# web UI, get dynamic database credentials, have SSH user certificates signed, sign and
# verify session recordings (and read the signing key's public keys), renew and revoke the leases it was given, and look up /
# renew its own token. Nothing else: no sys/mounts, no policy writes, no secret/, no
# AppRole, no SSH CA, no transit key configuration, no database root rotation.
#
# Placeholders, replaced by `manage.py vault_bootstrap` with the settings' values:
#   {kv_mount}         VAULT_KV_MOUNT         (default pamsite-kv)
#   {database_mount}   VAULT_DATABASE_MOUNT   (default pamsite-database)
#   {ssh_mount}        VAULT_SSH_MOUNT        (default pamsite-ssh)
#   {transit_mount}    VAULT_TRANSIT_MOUNT    (default pamsite-transit)
#   {transit_key}      VAULT_TRANSIT_KEY      (default pamsite-recordings)
#   {ssh_role}         VAULT_SSH_ROLE         (default pamsite-gateway)
# See the rendered text with `manage.py vault_bootstrap --print-policy pamsite-app`.

# Static account passwords (KV v2): read, and write new versions at onboarding and
# rotation. Old versions stay (no delete, no destroy): rotation never loses a password.
path "{kv_mount}/data/*" {
  capabilities = ["create", "read", "update"]
}
path "{kv_mount}/metadata/*" {
  capabilities = ["read"]
}
# The show-once stash of a database grant's dynamic password (grants/<grant>): destroyed
# when shown, removed with all its versions when the grant is released.
path "{kv_mount}/destroy/grants/*" {
  capabilities = ["update"]
}
path "{kv_mount}/metadata/grants/*" {
  capabilities = ["read", "delete"]
}

# Dynamic database accounts, one lease per grant.
path "{database_mount}/creds/*" {
  capabilities = ["read"]
}
# Database connections and roles, configured by pam-admins through the web UI. Vault
# never returns a connection's password, so read is safe. No rotate-root, no reset.
path "{database_mount}/config/*" {
  capabilities = ["create", "read", "update"]
}
path "{database_mount}/roles/*" {
  capabilities = ["create", "read", "update"]
}

# Short-lived SSH user certificates for the gateway's upstream logins.
path "{ssh_mount}/sign/*" {
  capabilities = ["create", "update"]
}
# One CA-mode role per ssh-ca account, limited to that account's principal.
path "{ssh_mount}/roles/*" {
  capabilities = ["create", "read", "update"]
}
# ...but the bootstrap's gateway role (any principal) stays as vault_bootstrap wrote it:
# the more specific path wins over the glob above.
path "{ssh_mount}/roles/{ssh_role}" {
  capabilities = ["read"]
}

# Signatures over session recordings (sha256 at close), and their verification.
path "{transit_mount}/sign/{transit_key}" {
  capabilities = ["update"]
}
path "{transit_mount}/verify/{transit_key}" {
  capabilities = ["update"]
}
# The signing key's public keys (every version), which pamsite keeps to check recordings
# while Vault is down or after it lost the key. Read only: this path shows the public
# parts and the key's settings, never a private key; changing the key needs update.
path "{transit_mount}/keys/{transit_key}" {
  capabilities = ["read"]
}

# Extend or end the database leases of grants.
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}

# The app's own AppRole token (the role sets token_no_default_policy, so say it here).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
