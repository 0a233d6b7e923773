# pamsite-app: the policy of the pamsite web app, SSH gateway and worker (AppRole "pamsite").
#
# Least privilege: read and write pamsite's KV v2 secrets, get dynamic database
# credentials, have SSH user certificates signed, sign and verify session recordings,
# renew and revoke the leases it was given, and look up / renew its own token.
# Nothing else: no sys/mounts, no policy writes, no secret/, no engine configuration.
#
# Placeholders, replaced by `manage.py vault_bootstrap` with the settings' values:
#   {kv_mount}         VAULT_KV_MOUNT         (default pamsite-kv)
#   {database_mount}   VAULT_DATABASE_MOUNT   (default pamsite-database)
#   {ssh_mount}        VAULT_SSH_MOUNT        (default pamsite-ssh)
#   {transit_mount}    VAULT_TRANSIT_MOUNT    (default pamsite-transit)
#   {transit_key}      VAULT_TRANSIT_KEY      (default pamsite-recordings)
# See the rendered text with `manage.py vault_bootstrap --print-policy pamsite-app`.

# Static account passwords (KV v2): read, and write new versions at rotation.
path "{kv_mount}/data/*" {
  capabilities = ["create", "read", "update"]
}
path "{kv_mount}/metadata/*" {
  capabilities = ["read"]
}

# Dynamic database accounts, one lease per grant.
path "{database_mount}/creds/*" {
  capabilities = ["read"]
}

# Short-lived SSH user certificates for the gateway's upstream logins.
path "{ssh_mount}/sign/*" {
  capabilities = ["create", "update"]
}

# Signatures over session recordings (sha256 at close), and their verification.
path "{transit_mount}/sign/{transit_key}" {
  capabilities = ["update"]
}
path "{transit_mount}/verify/{transit_key}" {
  capabilities = ["update"]
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
