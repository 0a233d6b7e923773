"""Who gets which page: every URL pattern of pamsite, for each persona, by GET and by POST.

Read by a security reviewer, enforced by tests/test_authz_matrix.py: the test walks the
URLconf and fails for a pattern missing here, for a row whose pattern is gone, and for any
page that answers a persona otherwise than written. Change a row only with the view.

Rows: the pattern's name as Django resolves it (``namespace:name``; the route itself for an
unnamed pattern: a redirect, the admin's catch-all), the method, then one answer per persona:

    anon   anonymous: no session
    pwd    password_only: signed in with the password, no code yet. Holds every role and
           break-glass: only the missing second factor stops her.
    req    requester: alice, who owns every object the URLs name (her access request, her
           grant, her gateway session and its recording, her SSH key, a legal hold on her
           session, her authenticator in the admin)
    appr   approver: bob
    audit  auditor: carol
    admin  pam_admin: pat
    deact  deactivated: a user holding every role, signed in with both factors, then
           deactivated (is_active=False) while her session was open
    other  other_requester: dave, a requester like alice, looking at alice's objects
    glass  break_glass: gail, a requester in the break-glass group (not alice)

Answers:

    ok     2xx: the page or file (a page whose view does not restrict the method shows
           itself to a POST too); for a form, the form shown again or the result page
    redir  302 elsewhere than the login pages: let in; the action ran (or was turned down
           for the object's state, with a message) and the browser is sent on
    400    let in; the (empty) form was refused
    login  302 to the login page (/login/)
    otp    302 to the second step (/login/verify/; /mfa/enrol/ if no authenticator yet)
    403    refused: the role or the rule for the object says no
    404    hidden: an object that is not one's own is answered as if it did not exist
    405    the method is not accepted

A POST carries the smallest body that gets past the form (tests/test_authz_matrix.py,
POST_BODIES), so the answer is the authorisation decision rather than a missing field; the
test client does not check CSRF tokens (CSRF protection is tested on its own).
"""

from __future__ import annotations

PERSONAS = (
    "anonymous", "password_only", "requester", "approver", "auditor", "pam_admin", "deactivated",
    "other_requester", "break_glass",
)  # fmt: skip
METHODS = ("GET", "POST")
ANSWERS = frozenset({"ok", "redir", "400", "login", "otp", "403", "404", "405"})

# Patterns whose URL an earlier pattern answers: their rows are what that URL answers.
# admin:login is /admin/login/, which pamsite/urls.py sends to pamsite's own login page.
SHADOWED = frozenset({"admin:login"})

MATRIX = """
# --- Site pages: the dashboard (what each role can do), the load balancer's probe (public, GET
#     only), the system status (pam-admins: pamsite.status).
#                                                       anon  pwd   req   appr  audit admin deact other glass
dashboard                                          GET  login otp   ok    ok    ok    ok    login ok    ok
dashboard                                          POST login otp   ok    ok    ok    ok    login ok    ok
healthz                                            GET  ok    ok    ok    ok    ok    ok    ok    ok    ok
healthz                                            POST 405   405   405   405   405   405   405   405   405
status                                             GET  login otp   403   403   403   ok    login 403   403
status                                             POST login otp   405   405   405   405   login 405   405

# --- Signing in (identity.views). The login page, logout and the probe are the only public pages
#     (pamsite.middleware.PUBLIC_VIEWS); the code and enrolment steps are for a password-only
#     session (MFA_PENDING_VIEWS). A signed-in user is sent on from the login pages; logout is a
#     POST (a GET shows the button). The deactivated user's session no longer counts: to her the
#     login page is the anonymous one.
#                                                       anon  pwd   req   appr  audit admin deact other glass
identity:login                                     GET  ok    otp   redir redir redir redir ok    redir redir
identity:login                                     POST ok    otp   redir redir redir redir ok    redir redir
identity:verify                                    GET  login ok    redir redir redir redir login redir redir
identity:verify                                    POST login ok    redir redir redir redir login redir redir
identity:enrol                                     GET  login otp   redir redir redir redir login redir redir
identity:enrol                                     POST login otp   redir redir redir redir login redir redir
identity:logout                                    GET  ok    ok    ok    ok    ok    ok    ok    ok    ok
identity:logout                                    POST login login login login login login login login login

# --- One's own account: anyone signed in with both factors, on her own things only. The forms
#     are posted empty: 400 is "let in, the form refused". Another's SSH key is a 404
#     (identity.selectors.get_ssh_key_for), for pam-admins too.
#                                                       anon  pwd   req   appr  audit admin deact other glass
identity:account                                   GET  login otp   ok    ok    ok    ok    login ok    ok
identity:account                                   POST login otp   ok    ok    ok    ok    login ok    ok
identity:self_reset                                GET  login otp   405   405   405   405   login 405   405
identity:self_reset                                POST login otp   400   400   400   400   login 400   400
identity:backup_codes                              GET  login otp   405   405   405   405   login 405   405
identity:backup_codes                              POST login otp   400   400   400   400   login 400   400
identity:ssh_key_add                               GET  login otp   405   405   405   405   login 405   405
identity:ssh_key_add                               POST login otp   400   400   400   400   login 400   400
identity:ssh_key_remove                            GET  login otp   405   405   405   405   login 405   405
identity:ssh_key_remove                            POST login otp   redir 404   404   404   login 404   404
identity:password_change                           GET  login otp   405   405   405   405   login 405   405
identity:password_change                           POST login otp   400   400   400   400   login 400   400

# --- The first password (identity.views.password_new_view, pamsite.middleware): the one page of a
#     user who signed in with a one-time password (no persona here must change hers: see
#     tests/identity/test_invitations.py); anyone else is sent on. The invitation link is public
#     but answers only a valid token (here one for ivan), and only to someone not signed in
#     (a signed-in user is told to sign out first: 403; the deactivated user's session no
#     longer counts): it keeps the link in the session and sends the browser on to the password
#     page, which without an opened link says to open it first (400).
#                                                       anon  pwd   req   appr  audit admin deact other glass
identity:password_new                              GET  login otp   redir redir redir redir login redir redir
identity:password_new                              POST login otp   redir redir redir redir login redir redir
identity:invitation                                GET  redir 403   403   403   403   403   redir 403   403
identity:invitation                                POST 405   405   405   405   405   405   405   405   405
identity:invitation_password                       GET  400   403   403   403   403   403   400   403   403
identity:invitation_password                       POST 400   403   403   403   403   403   400   403   403

# --- Users and the directory: pam-admins (identity.selectors.user_search_for, get_user_for_admin,
#     get_user_for_mfa_reset; identity.directory.directory_overview_for, group_mapping_add/remove).
#     The user pages name alice (her roles set, her deactivation and her password reset, each
#     with a reason or a method; the reset shows the new link once: ok); the reactivation names
#     dora, the deactivated persona. The authenticator reset is of alice's, with a reason.
#                                                       anon  pwd   req   appr  audit admin deact other glass
identity:users                                     GET  login otp   403   403   403   ok    login 403   403
identity:users                                     POST login otp   403   403   403   ok    login 403   403
identity:user_invite                               GET  login otp   403   403   403   ok    login 403   403
identity:user_invite                               POST login otp   403   403   403   400   login 403   403
identity:user                                      GET  login otp   403   403   403   ok    login 403   403
identity:user                                      POST login otp   405   405   405   405   login 405   405
identity:user_roles                                GET  login otp   405   405   405   405   login 405   405
identity:user_roles                                POST login otp   403   403   403   redir login 403   403
identity:user_deactivate                           GET  login otp   405   405   405   405   login 405   405
identity:user_deactivate                           POST login otp   403   403   403   redir login 403   403
identity:user_reactivate                           GET  login otp   405   405   405   405   login 405   405
identity:user_reactivate                           POST login otp   403   403   403   redir login 403   403
identity:user_password_reset                       GET  login otp   405   405   405   405   login 405   405
identity:user_password_reset                       POST login otp   403   403   403   ok    login 403   403
identity:admin_reset                               GET  login otp   403   403   403   ok    login 403   403
identity:admin_reset                               POST login otp   403   403   403   redir login 403   403
identity:directory                                 GET  login otp   403   403   403   ok    login 403   403
identity:directory                                 POST login otp   405   405   405   405   login 405   405
identity:directory_mapping_add                     GET  login otp   405   405   405   405   login 405   405
identity:directory_mapping_add                     POST login otp   403   403   403   redir login 403   403
identity:directory_mapping_remove                  GET  login otp   405   405   405   405   login 405   405
identity:directory_mapping_remove                  POST login otp   403   403   403   redir login 403   403

# --- Locked sign-ins: pam-admins see what is locked and unlock it (identity.lockout.lockouts_for,
#     lockout_release; both require the role). The unlock is of a username that is not locked:
#     the pam-admin is told so and sent back.
#                                                       anon  pwd   req   appr  audit admin deact other glass
identity:lockouts                                  GET  login otp   403   403   403   ok    login 403   403
identity:lockouts                                  POST login otp   405   405   405   405   login 405   405
identity:lockout_release                           GET  login otp   405   405   405   405   login 405   405
identity:lockout_release                           POST login otp   403   403   403   redir login 403   403

# --- The audit trail, its export and its verification: auditors only
#     (audit.selectors.audit_trail_require_access).
#                                                       anon  pwd   req   appr  audit admin deact other glass
audit:events                                       GET  login otp   403   403   ok    403   login 403   403
audit:events                                       POST login otp   405   405   405   405   login 405   405
audit:verify                                       GET  login otp   405   405   405   405   login 405   405
audit:verify                                       POST login otp   403   403   redir 403   login 403   403
audit:export_csv                                   GET  login otp   403   403   ok    403   login 403   403
audit:export_csv                                   POST login otp   405   405   405   405   login 405   405
audit:export_jsonl                                 GET  login otp   403   403   ok    403   login 403   403
audit:export_jsonl                                 POST login otp   405   405   405   405   login 405   405

# --- My access and new requests (access.selectors.requestable_accounts_for; request_new needs the
#     requester role). The request posted is valid (alice's policy, a ticket): allowed means sent.
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:mine                                        GET  login otp   ok    ok    ok    ok    login ok    ok
access:mine                                        POST login otp   ok    ok    ok    ok    login ok    ok
access:request_new                                 GET  login otp   ok    403   403   403   login ok    ok
access:request_new                                 POST login otp   redir 403   403   403   login redir redir

# --- Alice's pending request (access.selectors.get_request_for: its requester and the overseers
#     -- approvers, pam-admins, auditors -- see it; anyone else gets 404). Who acts is the
#     service's rule: only the requester cancels; the requester, approvers and pam-admins retry
#     the checkout; only approvers decide, never on their own request (the decision posted is
#     a denial: an approval would go to Vault). Auditors read only.
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:request                                     GET  login otp   ok    ok    ok    ok    login 404   404
access:request                                     POST login otp   ok    ok    ok    ok    login 404   404
access:request_cancel                              GET  login otp   405   405   405   405   login 405   405
access:request_cancel                              POST login otp   redir 403   403   403   login 404   404
access:request_retry                               GET  login otp   405   405   405   405   login 405   405
access:request_retry                               POST login otp   redir redir 403   redir login 404   404
access:request_decide                              GET  login otp   405   405   405   405   login 405   405
access:request_decide                              POST login otp   403   redir 403   403   login 404   404

# --- The approval queue: approvers (access.selectors.approval_queue_for).
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:approvals                                   GET  login otp   403   ok    403   403   login 403   403
access:approvals                                   POST login otp   403   ok    403   403   login 403   403

# --- Alice's live grant of a static account whose policy allows showing the password once
#     (access.selectors.get_grant_for: holder and overseers see it, anyone else 404). Only the
#     holder checks in and reveals (the code posted is wrong: she is stopped there, before
#     Vault); approvers and pam-admins revoke; only an approver who is not the holder reviews
#     an emergency grant (grant_review is tried on alice's break-glass grant).
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:grant                                       GET  login otp   ok    ok    ok    ok    login 404   404
access:grant                                       POST login otp   ok    ok    ok    ok    login 404   404
access:grant_checkin                               GET  login otp   405   405   405   405   login 405   405
access:grant_checkin                               POST login otp   redir 403   403   403   login 404   404
access:grant_revoke                                GET  login otp   405   405   405   405   login 405   405
access:grant_revoke                                POST login otp   403   redir 403   redir login 404   404
access:grant_reveal                                GET  login otp   405   405   405   405   login 405   405
access:grant_reveal                                POST login otp   redir 403   403   403   login 404   404
access:grant_review                                GET  login otp   405   405   405   405   login 405   405
access:grant_review                                POST login otp   403   redir 403   403   login 404   404

# --- Emergency access: members of the break-glass group only (the form is posted empty: no
#     grant is made).
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:break_glass                                 GET  login otp   403   403   403   403   login 403   ok
access:break_glass                                 POST login otp   403   403   403   403   login 403   ok

# --- Targets: everyone sees the list (requesters only what they may request); pinning a host
#     key and connecting an account to Vault are for pam-admins. The forms are posted empty.
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:targets                                     GET  login otp   ok    ok    ok    ok    login ok    ok
access:targets                                     POST login otp   ok    ok    ok    ok    login ok    ok
access:target                                      GET  login otp   403   403   403   ok    login 403   403
access:target                                      POST login otp   403   403   403   ok    login 403   403
access:account_setup                               GET  login otp   403   403   403   ok    login 403   403
access:account_setup                               POST login otp   403   403   403   ok    login 403   403

# --- Configuring targets, accounts and policies: pam-admins only (access.selectors
#     get_target_for_admin, get_account_for_admin, get_policy_for_admin, policies_for_admin).
#     The forms are posted empty (the form is shown again); the test connection runs (Vault is
#     unreachable: the result says so); deactivating without a reason is turned down with a
#     message. Pages that only show are GET-only.
#                                                       anon  pwd   req   appr  audit admin deact other glass
access:target_new                                  GET  login otp   403   403   403   ok    login 403   403
access:target_new                                  POST login otp   403   403   403   ok    login 403   403
access:target_edit                                 GET  login otp   403   403   403   ok    login 403   403
access:target_edit                                 POST login otp   403   403   403   ok    login 403   403
access:account_new                                 GET  login otp   403   403   403   ok    login 403   403
access:account_new                                 POST login otp   403   403   403   ok    login 403   403
access:account                                     GET  login otp   403   403   403   ok    login 403   403
access:account                                     POST login otp   405   405   405   405   login 405   405
access:account_edit                                GET  login otp   403   403   403   ok    login 403   403
access:account_edit                                POST login otp   403   403   403   ok    login 403   403
access:account_test                                GET  login otp   405   405   405   405   login 405   405
access:account_test                                POST login otp   403   403   403   redir login 403   403
access:account_deactivate                          GET  login otp   405   405   405   405   login 405   405
access:account_deactivate                          POST login otp   403   403   403   redir login 403   403
access:account_reactivate                          GET  login otp   405   405   405   405   login 405   405
access:account_reactivate                          POST login otp   403   403   403   redir login 403   403
access:policies                                    GET  login otp   403   403   403   ok    login 403   403
access:policies                                    POST login otp   405   405   405   405   login 405   405
access:policy_new                                  GET  login otp   403   403   403   ok    login 403   403
access:policy_new                                  POST login otp   403   403   403   ok    login 403   403
access:policy_edit                                 GET  login otp   403   403   403   ok    login 403   403
access:policy_edit                                 POST login otp   403   403   403   ok    login 403   403
access:policy_deactivate                           GET  login otp   405   405   405   405   login 405   405
access:policy_deactivate                           POST login otp   403   403   403   redir login 403   403
access:policy_reactivate                           GET  login otp   405   405   405   405   login 405   405
access:policy_reactivate                           POST login otp   403   403   403   redir login 403   403

# --- Gateway sessions (recordings.selectors): alice's live session and its terminal recording.
#     Its page is for her and the overseers (anyone else 404); searching and downloading are for
#     the overseers (her own included: 403); terminating for approvers and pam-admins; legal
#     holds for auditors and pam-admins (the hold released is one on alice's session).
#                                                       anon  pwd   req   appr  audit admin deact other glass
sessions:search                                    GET  login otp   403   ok    ok    ok    login 403   403
sessions:search                                    POST login otp   405   405   405   405   login 405   405
sessions:live                                      GET  login otp   ok    ok    ok    ok    login ok    ok
sessions:live                                      POST login otp   405   405   405   405   login 405   405
sessions:detail                                    GET  login otp   ok    ok    ok    ok    login 404   404
sessions:detail                                    POST login otp   405   405   405   405   login 405   405
sessions:terminate                                 GET  login otp   405   405   405   405   login 405   405
sessions:terminate                                 POST login otp   403   redir 403   redir login 404   404
sessions:download                                  GET  login otp   403   ok    ok    ok    login 404   404
sessions:download                                  POST login otp   405   405   405   405   login 405   405
sessions:hold_place                                GET  login otp   405   405   405   405   login 405   405
sessions:hold_place                                POST login otp   403   403   redir redir login 403   403
sessions:hold_release                              GET  login otp   405   405   405   405   login 405   405
sessions:hold_release                              POST login otp   403   403   redir redir login 403   403

# --- Replay and live view (recordings.replay): the replay page and the recording endpoints follow
#     the session page's rule (alice replays her own session); watching live is for the
#     overseers. The endpoints are tried in a browser session that has opened the replay or
#     watch page (without that they answer 403 even to those who may see the session: the
#     page is where viewing is audited).
#                                                       anon  pwd   req   appr  audit admin deact other glass
replay:session                                     GET  login otp   ok    ok    ok    ok    login 404   404
replay:session                                     POST login otp   405   405   405   405   login 405   405
replay:watch                                       GET  login otp   403   ok    ok    ok    login 404   404
replay:watch                                       POST login otp   405   405   405   405   login 405   405
replay:watch-status                                GET  login otp   403   ok    ok    ok    login 404   404
replay:watch-status                                POST login otp   405   405   405   405   login 405   405
replay:cast                                        GET  login otp   ok    ok    ok    ok    login 404   404
replay:cast                                        POST login otp   405   405   405   405   login 405   405
replay:index                                       GET  login otp   ok    ok    ok    ok    login 404   404
replay:index                                       POST login otp   405   405   405   405   login 405   405
replay:segment                                     GET  login otp   ok    ok    ok    ok    login 404   404
replay:segment                                     POST login otp   405   405   405   405   login 405   405

# --- The Django admin ("Configuration", pamsite.admin.PamsiteAdminSite): verified pam-admins;
#     every other signed-in user gets 403, never the admin's own login form (its login URL
#     sends to pamsite's: admin:login is shadowed by that redirect, see SHADOWED). Read-only
#     models answer 403 to add, change (POST) and delete even for pam-admins; each model's
#     "<object_id>/" URL redirects to its change page. Objects are alice's (her user, her
#     authenticator...), else the one row the test makes.
#                                                       anon  pwd   req   appr  audit admin deact other glass
admin/login/                                       GET  login otp   login login login login login login login
admin/login/                                       POST login otp   login login login login login login login
admin:index                                        GET  login otp   403   403   403   ok    login 403   403
admin:index                                        POST login otp   403   403   403   ok    login 403   403
admin:login                                        GET  login otp   login login login login login login login
admin:login                                        POST login otp   login login login login login login login
admin:logout                                       GET  login otp   403   403   403   405   login 403   403
admin:logout                                       POST login otp   403   403   403   login login 403   403
admin:password_change                              GET  login otp   403   403   403   ok    login 403   403
admin:password_change                              POST login otp   403   403   403   ok    login 403   403
admin:password_change_done                         GET  login otp   403   403   403   ok    login 403   403
admin:password_change_done                         POST login otp   403   403   403   405   login 403   403
admin:autocomplete                                 GET  login otp   403   403   403   403   login 403   403
admin:autocomplete                                 POST login otp   403   403   403   405   login 403   403
admin:jsi18n                                       GET  login otp   403   403   403   ok    login 403   403
admin:jsi18n                                       POST login otp   403   403   403   405   login 403   403
admin:view_on_site                                 GET  login otp   403   403   403   redir login 403   403
admin:view_on_site                                 POST login otp   403   403   403   redir login 403   403
admin:auth_group_changelist                        GET  login otp   403   403   403   ok    login 403   403
admin:auth_group_changelist                        POST login otp   403   403   403   ok    login 403   403
admin:auth_group_add                               GET  login otp   403   403   403   ok    login 403   403
admin:auth_group_add                               POST login otp   403   403   403   ok    login 403   403
admin:auth_group_history                           GET  login otp   403   403   403   ok    login 403   403
admin:auth_group_history                           POST login otp   403   403   403   ok    login 403   403
admin:auth_group_delete                            GET  login otp   403   403   403   ok    login 403   403
admin:auth_group_delete                            POST login otp   403   403   403   ok    login 403   403
admin:auth_group_change                            GET  login otp   403   403   403   ok    login 403   403
admin:auth_group_change                            POST login otp   403   403   403   ok    login 403   403
admin/auth/group/<path:object_id>/                 GET  login otp   403   403   403   redir login 403   403
admin/auth/group/<path:object_id>/                 POST login otp   403   403   403   redir login 403   403

# django-otp's devices (identity.admin): read-only lists without seeds or backup codes; no
#     add or change (a lost authenticator is reset on the user's page, audited).
admin:otp_totp_totpdevice_changelist               GET  login otp   403   403   403   ok    login 403   403
admin:otp_totp_totpdevice_changelist               POST login otp   403   403   403   ok    login 403   403
admin:otp_totp_totpdevice_add                      GET  login otp   403   403   403   403   login 403   403
admin:otp_totp_totpdevice_add                      POST login otp   403   403   403   403   login 403   403
admin:otp_totp_totpdevice_history                  GET  login otp   403   403   403   ok    login 403   403
admin:otp_totp_totpdevice_history                  POST login otp   403   403   403   ok    login 403   403
admin:otp_totp_totpdevice_delete                   GET  login otp   403   403   403   403   login 403   403
admin:otp_totp_totpdevice_delete                   POST login otp   403   403   403   403   login 403   403
admin:otp_totp_totpdevice_change                   GET  login otp   403   403   403   ok    login 403   403
admin:otp_totp_totpdevice_change                   POST login otp   403   403   403   403   login 403   403
admin/otp_totp/totpdevice/<path:object_id>/        GET  login otp   403   403   403   redir login 403   403
admin/otp_totp/totpdevice/<path:object_id>/        POST login otp   403   403   403   redir login 403   403
admin:otp_static_staticdevice_changelist           GET  login otp   403   403   403   ok    login 403   403
admin:otp_static_staticdevice_changelist           POST login otp   403   403   403   ok    login 403   403
admin:otp_static_staticdevice_add                  GET  login otp   403   403   403   403   login 403   403
admin:otp_static_staticdevice_add                  POST login otp   403   403   403   403   login 403   403
admin:otp_static_staticdevice_history              GET  login otp   403   403   403   ok    login 403   403
admin:otp_static_staticdevice_history              POST login otp   403   403   403   ok    login 403   403
admin:otp_static_staticdevice_delete               GET  login otp   403   403   403   403   login 403   403
admin:otp_static_staticdevice_delete               POST login otp   403   403   403   403   login 403   403
admin:otp_static_staticdevice_change               GET  login otp   403   403   403   ok    login 403   403
admin:otp_static_staticdevice_change               POST login otp   403   403   403   403   login 403   403
admin/otp_static/staticdevice/<path:object_id>/    GET  login otp   403   403   403   redir login 403   403
admin/otp_static/staticdevice/<path:object_id>/    POST login otp   403   403   403   redir login 403   403

# A pam-admin sets a user's password and changes roles (groups) here; each change is an
#     audit event (pamsite.admin.AuditedModelAdmin, PamsiteUserAdmin.user_change_password).
admin:auth_user_password_change                    GET  login otp   403   403   403   ok    login 403   403
admin:auth_user_password_change                    POST login otp   403   403   403   ok    login 403   403
admin:identity_user_changelist                     GET  login otp   403   403   403   ok    login 403   403
admin:identity_user_changelist                     POST login otp   403   403   403   ok    login 403   403
admin:identity_user_add                            GET  login otp   403   403   403   ok    login 403   403
admin:identity_user_add                            POST login otp   403   403   403   ok    login 403   403
admin:identity_user_history                        GET  login otp   403   403   403   ok    login 403   403
admin:identity_user_history                        POST login otp   403   403   403   ok    login 403   403
admin:identity_user_delete                         GET  login otp   403   403   403   ok    login 403   403
admin:identity_user_delete                         POST login otp   403   403   403   ok    login 403   403
admin:identity_user_change                         GET  login otp   403   403   403   ok    login 403   403
admin:identity_user_change                         POST login otp   403   403   403   ok    login 403   403
admin/identity/user/<path:object_id>/              GET  login otp   403   403   403   redir login 403   403
admin/identity/user/<path:object_id>/              POST login otp   403   403   403   redir login 403   403
admin:identity_directorysyncrun_changelist         GET  login otp   403   403   403   ok    login 403   403
admin:identity_directorysyncrun_changelist         POST login otp   403   403   403   ok    login 403   403
admin:identity_directorysyncrun_add                GET  login otp   403   403   403   403   login 403   403
admin:identity_directorysyncrun_add                POST login otp   403   403   403   403   login 403   403
admin:identity_directorysyncrun_history            GET  login otp   403   403   403   ok    login 403   403
admin:identity_directorysyncrun_history            POST login otp   403   403   403   ok    login 403   403
admin:identity_directorysyncrun_delete             GET  login otp   403   403   403   403   login 403   403
admin:identity_directorysyncrun_delete             POST login otp   403   403   403   403   login 403   403
admin:identity_directorysyncrun_change             GET  login otp   403   403   403   ok    login 403   403
admin:identity_directorysyncrun_change             POST login otp   403   403   403   403   login 403   403
admin/identity/directorysyncrun/<path:object_id>/  GET  login otp   403   403   403   redir login 403   403
admin/identity/directorysyncrun/<path:object_id>/  POST login otp   403   403   403   redir login 403   403
admin:identity_ldapgroupmapping_changelist         GET  login otp   403   403   403   ok    login 403   403
admin:identity_ldapgroupmapping_changelist         POST login otp   403   403   403   ok    login 403   403
admin:identity_ldapgroupmapping_add                GET  login otp   403   403   403   403   login 403   403
admin:identity_ldapgroupmapping_add                POST login otp   403   403   403   403   login 403   403
admin:identity_ldapgroupmapping_history            GET  login otp   403   403   403   ok    login 403   403
admin:identity_ldapgroupmapping_history            POST login otp   403   403   403   ok    login 403   403
admin:identity_ldapgroupmapping_delete             GET  login otp   403   403   403   403   login 403   403
admin:identity_ldapgroupmapping_delete             POST login otp   403   403   403   403   login 403   403
admin:identity_ldapgroupmapping_change             GET  login otp   403   403   403   ok    login 403   403
admin:identity_ldapgroupmapping_change             POST login otp   403   403   403   403   login 403   403
admin/identity/ldapgroupmapping/<path:object_id>/  GET  login otp   403   403   403   redir login 403   403
admin/identity/ldapgroupmapping/<path:object_id>/  POST login otp   403   403   403   redir login 403   403

# The audit trail is not in the admin (audit/admin.py): pam-admins are not auditors.
admin:access_target_changelist                     GET  login otp   403   403   403   ok    login 403   403
admin:access_target_changelist                     POST login otp   403   403   403   ok    login 403   403
admin:access_target_add                            GET  login otp   403   403   403   ok    login 403   403
admin:access_target_add                            POST login otp   403   403   403   ok    login 403   403
admin:access_target_history                        GET  login otp   403   403   403   ok    login 403   403
admin:access_target_history                        POST login otp   403   403   403   ok    login 403   403
admin:access_target_delete                         GET  login otp   403   403   403   ok    login 403   403
admin:access_target_delete                         POST login otp   403   403   403   ok    login 403   403
admin:access_target_change                         GET  login otp   403   403   403   ok    login 403   403
admin:access_target_change                         POST login otp   403   403   403   ok    login 403   403
admin/access/target/<path:object_id>/              GET  login otp   403   403   403   redir login 403   403
admin/access/target/<path:object_id>/              POST login otp   403   403   403   redir login 403   403
admin:access_account_changelist                    GET  login otp   403   403   403   ok    login 403   403
admin:access_account_changelist                    POST login otp   403   403   403   ok    login 403   403
admin:access_account_add                           GET  login otp   403   403   403   ok    login 403   403
admin:access_account_add                           POST login otp   403   403   403   ok    login 403   403
admin:access_account_history                       GET  login otp   403   403   403   ok    login 403   403
admin:access_account_history                       POST login otp   403   403   403   ok    login 403   403
admin:access_account_delete                        GET  login otp   403   403   403   ok    login 403   403
admin:access_account_delete                        POST login otp   403   403   403   ok    login 403   403
admin:access_account_change                        GET  login otp   403   403   403   ok    login 403   403
admin:access_account_change                        POST login otp   403   403   403   ok    login 403   403
admin/access/account/<path:object_id>/             GET  login otp   403   403   403   redir login 403   403
admin/access/account/<path:object_id>/             POST login otp   403   403   403   redir login 403   403
admin:access_accesspolicy_changelist               GET  login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_changelist               POST login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_add                      GET  login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_add                      POST login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_history                  GET  login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_history                  POST login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_delete                   GET  login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_delete                   POST login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_change                   GET  login otp   403   403   403   ok    login 403   403
admin:access_accesspolicy_change                   POST login otp   403   403   403   ok    login 403   403
admin/access/accesspolicy/<path:object_id>/        GET  login otp   403   403   403   redir login 403   403
admin/access/accesspolicy/<path:object_id>/        POST login otp   403   403   403   redir login 403   403
admin:recordings_gatewaysession_changelist         GET  login otp   403   403   403   ok    login 403   403
admin:recordings_gatewaysession_changelist         POST login otp   403   403   403   ok    login 403   403
admin:recordings_gatewaysession_add                GET  login otp   403   403   403   403   login 403   403
admin:recordings_gatewaysession_add                POST login otp   403   403   403   403   login 403   403
admin:recordings_gatewaysession_history            GET  login otp   403   403   403   ok    login 403   403
admin:recordings_gatewaysession_history            POST login otp   403   403   403   ok    login 403   403
admin:recordings_gatewaysession_delete             GET  login otp   403   403   403   403   login 403   403
admin:recordings_gatewaysession_delete             POST login otp   403   403   403   403   login 403   403
admin:recordings_gatewaysession_change             GET  login otp   403   403   403   ok    login 403   403
admin:recordings_gatewaysession_change             POST login otp   403   403   403   403   login 403   403
admin/recordings/gatewaysession/<path:object_id>/  GET  login otp   403   403   403   redir login 403   403
admin/recordings/gatewaysession/<path:object_id>/  POST login otp   403   403   403   redir login 403   403
admin:recordings_recording_changelist              GET  login otp   403   403   403   ok    login 403   403
admin:recordings_recording_changelist              POST login otp   403   403   403   ok    login 403   403
admin:recordings_recording_add                     GET  login otp   403   403   403   403   login 403   403
admin:recordings_recording_add                     POST login otp   403   403   403   403   login 403   403
admin:recordings_recording_history                 GET  login otp   403   403   403   ok    login 403   403
admin:recordings_recording_history                 POST login otp   403   403   403   ok    login 403   403
admin:recordings_recording_delete                  GET  login otp   403   403   403   403   login 403   403
admin:recordings_recording_delete                  POST login otp   403   403   403   403   login 403   403
admin:recordings_recording_change                  GET  login otp   403   403   403   ok    login 403   403
admin:recordings_recording_change                  POST login otp   403   403   403   403   login 403   403
admin/recordings/recording/<path:object_id>/       GET  login otp   403   403   403   redir login 403   403
admin/recordings/recording/<path:object_id>/       POST login otp   403   403   403   redir login 403   403
admin:app_list                                     GET  login otp   403   403   403   ok    login 403   403
admin:app_list                                     POST login otp   403   403   403   ok    login 403   403
admin/(?P<url>.*)$                                 GET  login otp   403   403   403   404   login 403   403
admin/(?P<url>.*)$                                 POST login otp   403   403   403   404   login 403   403
"""


def _parse(text: str) -> dict[tuple[str, str], dict[str, str]]:
    table: dict[tuple[str, str], dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, method, *answers = line.split()
        where = f"tests/authz_matrix.py, MATRIX line {number} ({key} {method})"
        if method not in METHODS:
            raise ValueError(f"{where}: the method must be one of {METHODS}")
        if len(answers) != len(PERSONAS):
            raise ValueError(f"{where}: {len(answers)} answers for {len(PERSONAS)} personas")
        if unknown := set(answers) - ANSWERS:
            raise ValueError(f"{where}: unknown answers {sorted(unknown)}")
        if (key, method) in table:
            raise ValueError(f"{where}: a second row for the same pattern and method")
        table[key, method] = dict(zip(PERSONAS, answers, strict=True))
    return table


TABLE = _parse(MATRIX)
