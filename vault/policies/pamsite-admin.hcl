# pamsite-admin: what `manage.py vault_bootstrap` needs, for sites that will not hand
# it a root token. Create it once as a Vault administrator:
#
#   manage.py vault_bootstrap --print-policy pamsite-admin | bao policy write pamsite-admin -
#   bao token create -policy=pamsite-admin -ttl=15m     # then run the bootstrap with it
#
# It can rewrite the pamsite-app policy, and so grant the app anything: treat a token
# with it as you would a root token, and keep it short-lived. vault_bootstrap never
# writes this policy itself.
#
# Placeholders, replaced with the settings' values (see pamsite-app.hcl), plus
#   {approle_mount}    VAULT_APPROLE_MOUNT    (default approle)
#   {approle_name}     VAULT_APPROLE_NAME     (default pamsite)
#   {ssh_role}         VAULT_SSH_ROLE         (default pamsite-gateway)

# See which engines and auth methods are enabled, and enable pamsite's.
path "sys/mounts" {
  capabilities = ["read"]
}
path "sys/mounts/{kv_mount}" {
  capabilities = ["create", "read", "update"]
}
path "sys/mounts/{database_mount}" {
  capabilities = ["create", "read", "update"]
}
path "sys/mounts/{ssh_mount}" {
  capabilities = ["create", "read", "update"]
}
path "sys/mounts/{transit_mount}" {
  capabilities = ["create", "read", "update"]
}
path "sys/auth" {
  capabilities = ["read"]
}
path "sys/auth/{approle_mount}" {
  capabilities = ["create", "read", "update", "sudo"]
}

# The app's policy.
path "sys/policies/acl/pamsite-app" {
  capabilities = ["create", "read", "update"]
}

# SSH CA (generated once, never replaced by the bootstrap) and the gateway's signing role.
path "{ssh_mount}/config/ca" {
  capabilities = ["create", "read", "update"]
}
path "{ssh_mount}/roles/{ssh_role}" {
  capabilities = ["create", "read", "update"]
}

# The recordings' signing key.
path "{transit_mount}/keys/{transit_key}" {
  capabilities = ["create", "read", "update"]
}
path "{transit_mount}/keys/{transit_key}/config" {
  capabilities = ["create", "update"]
}

# The app's AppRole, its role_id and new secret_ids (--write-approle).
path "auth/{approle_mount}/role/{approle_name}" {
  capabilities = ["create", "read", "update"]
}
path "auth/{approle_mount}/role/{approle_name}/role-id" {
  capabilities = ["read"]
}
path "auth/{approle_mount}/role/{approle_name}/secret-id" {
  capabilities = ["create", "update"]
}
