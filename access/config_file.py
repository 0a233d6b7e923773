"""Targets, accounts and policies as one YAML file (``manage.py pam_config export|apply``).

For sites with dozens of PACS nodes: export what pamsite holds, edit or generate the file,
apply it. Applying is idempotent (a second apply changes nothing and audits nothing), checks
the whole file before changing anything (errors name the line and the field), and makes every
change in one transaction through the same services as the pages, each audited. Objects are
matched by name (targets, policies) and slug (accounts); a field left out keeps its value (its
default for something new); objects missing from the file are left as they are (nothing is
deleted). No secret is ever in the file: credentials stay in Vault.

Host keys are public and exported. Applying one pins it only with ``pin_host_keys`` and a
named pam-admin: pinning says "this is the host's real key", a decision for a person who
trusts the file (one pamsite exported, or checked); without it a key in the file that is not
the pinned one is reported and left for the Targets page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from access import services, targets
from access.forms import TAG_PATTERN
from access.models import AccessPolicy, Account, SslMode, Target
from audit.services import audit_record
from common.roles import Role, has_role
from identity.models import User
from targets import errors, ssh

FORMAT_VERSION = 1

# What the file holds of each object, in the order it is written; the first ones are required.
TARGET_KEYS = ("name", "kind", "host", "port", "description", "tags", "forward_ports", "host_key", "accounts")
TARGET_REQUIRED = ("name", "kind", "host")
ACCOUNT_KEYS = (
    "slug",
    "kind",
    "username",
    "description",
    "tags",
    "vault_role",
    "kv_path",
    "database_name",
    "database_sslmode",
    "active",
)
ACCOUNT_REQUIRED = ("slug", "kind", "username")
POLICY_KEYS = (
    "name",
    "groups",
    "accounts",
    "targets",
    "tags",
    "approvals_required",
    "max_duration_minutes",
    "ticket_required",
    "ticket_pattern",
    "ticket_example",
    "ticket_case_insensitive",
    "allow_reveal",
    "active",
)
POLICY_REQUIRED = ("name", "groups")

_TYPES = {
    "name": str,
    "kind": str,
    "host": str,
    "port": int,
    "description": str,
    "tags": "str-list",
    "forward_ports": "int-list",
    "host_key": str,
    "accounts": None,  # a list of mappings (targets) or of slugs (policies): checked where used
    "slug": str,
    "username": str,
    "vault_role": str,
    "kv_path": str,
    "database_name": str,
    "database_sslmode": str,
    "active": bool,
    "groups": "str-list",
    "targets": "str-list",
    "approvals_required": int,
    "max_duration_minutes": int,
    "ticket_required": bool,
    "ticket_pattern": str,
    "ticket_example": str,
    "ticket_case_insensitive": bool,
    "allow_reveal": bool,
}


class ConfigFileError(Exception):
    """The file cannot be applied; ``problems`` says where ("line 12, targets[0].port: ...")."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Change:
    """One change applying the file makes (or, in a dry run, would make)."""

    action: str  # create, change, pin, deactivate, reactivate
    what: str  # "target pacs01", "account pacs01-root", "policy PACS admins"
    changes: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        if self.action == "change":
            parts = [f"{c['field']} {_short(c['from'])} → {_short(c['to'])}" for c in self.changes]
            return f"change {self.what}: " + "; ".join(parts)
        if self.action == "pin":
            return f"pin the host key of {self.what}: {self.changes[0]['to']}"
        return f"{self.action} {self.what}"


@dataclass
class Outcome:
    """What an apply did (or would do): the changes, and what it left for a person."""

    changes: list[Change]
    notes: list[str]


def _short(value) -> str:
    text = repr(value) if not isinstance(value, str) else (value or "''")
    return text if len(text) <= 60 else text[:57] + "..."


# --- Export ------------------------------------------------------------------------------------


class _Flow(list):
    """A short list written on one line ([radiology, night])."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_export(*, acting_user: User | None = None, via: str = "manage.py pam_config export") -> str:
    """Every target (with its accounts and pinned host key) and policy as YAML; never a secret."""
    data: dict[str, Any] = {"version": FORMAT_VERSION, "targets": [], "policies": []}
    for target in Target.objects.order_by("name").prefetch_related("accounts"):
        item: dict[str, Any] = {
            "name": target.name,
            "kind": target.kind,
            "host": target.host,
            "port": target.port,
        }
        if target.description:
            item["description"] = target.description
        if target.tags:
            item["tags"] = _Flow(target.tags)
        if target.forward_ports:
            item["forward_ports"] = _Flow(target.forward_ports)
        if target.host_key:
            item["host_key"] = target.host_key
        item["accounts"] = [_account_item(a) for a in sorted(target.accounts.all(), key=lambda a: a.slug)]
        data["targets"].append(item)
    for policy in AccessPolicy.objects.order_by("name").prefetch_related("groups", "accounts", "targets"):
        item = {"name": policy.name, "groups": _Flow(sorted(g.name for g in policy.groups.all()))}
        if policy.accounts.exists():
            item["accounts"] = _Flow(sorted(a.slug for a in policy.accounts.all()))
        if policy.targets.exists():
            item["targets"] = _Flow(sorted(t.name for t in policy.targets.all()))
        if policy.tags:
            item["tags"] = _Flow(policy.tags)
        for key in POLICY_KEYS[5:-1]:
            item[key] = getattr(policy, key)
        if not policy.is_active:
            item["active"] = False
        data["policies"].append(item)
    text = (
        "# pamsite configuration: targets with their accounts, and policies (manage.py pam_config).\n"
        "# No secret is in this file: credentials stay in Vault. Host keys are public.\n"
        + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    )
    with transaction.atomic():
        audit_record(
            action="access.config.exported",
            actor=acting_user,
            details={
                "targets": len(data["targets"]),
                "policies": len(data["policies"]),
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "via": via,
            },
        )
    return text


def _account_item(account: Account) -> dict:
    item: dict[str, Any] = {"slug": account.slug, "kind": account.kind, "username": account.username}
    if account.description:
        item["description"] = account.description
    if account.tags:
        item["tags"] = _Flow(account.tags)
    for key in ("vault_role", "kv_path"):
        if getattr(account, key):
            item[key] = getattr(account, key)
    if account.kind == Account.Kind.DATABASE:
        item["database_name"] = account.database_name
        item["database_sslmode"] = account.database_sslmode
    if not account.is_active:
        item["active"] = False
    return item


# --- Reading the file, with line numbers --------------------------------------------------------


class _Map(dict):
    """A mapping read from the file, with the line of each key."""

    line = 0
    lines: dict


class _Seq(list):
    line = 0
    lines: list


def _read(text: str, source: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _convert(node, loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError([f"{where}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()


def _convert(node, loader):
    if isinstance(node, yaml.MappingNode):
        result = _Map()
        result.line, result.lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigFileError([f"line {line}: a key must be a word, not {key!r}"])
            if key in result:
                raise ConfigFileError([f"line {line}: {key} is given twice in the same place"])
            result[key] = _convert(value_node, loader)
            result.lines[key] = line
        return result
    if isinstance(node, yaml.SequenceNode):
        result = _Seq(_convert(item, loader) for item in node.value)
        result.line, result.lines = node.start_mark.line + 1, [i.start_mark.line + 1 for i in node.value]
        return result
    return loader.construct_object(node, deep=True)


# --- Checking it ---------------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, line: int, where: str, message: str) -> None:
        self.items.append(f"{self.source}:{line}: {where}: {message}")


def _fields(item, keys, required, where: str, problems: _Problems, types: dict | None = None) -> dict | None:
    """The known fields of one mapping, type-checked; None (with problems noted) if unusable."""
    if not isinstance(item, _Map):
        problems.add(getattr(item, "line", 0), where, "expected a mapping of fields (name: value)")
        return None
    ok = True
    for key in item:
        if key not in keys:
            problems.add(item.lines[key], f"{where}.{key}", f"unknown field (known: {', '.join(keys)})")
            ok = False
    for key in required:
        if key not in item or item[key] in (None, ""):
            problems.add(item.line, f"{where}.{key}", "is required")
            ok = False
    values = {}
    for key in keys:
        if key not in item:
            continue
        value, kind = item[key], (types or {}).get(key, _TYPES[key])
        line = item.lines[key]
        if value is None and kind in (str, "str-list", "int-list"):
            value = "" if kind is str else []
        if kind is str and not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool) and key in ("name", "slug"):
                value = str(value)
            else:
                problems.add(line, f"{where}.{key}", f"must be text, not {value!r}")
                ok = False
                continue
        elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            problems.add(line, f"{where}.{key}", f"must be a whole number, not {value!r}")
            ok = False
            continue
        elif kind is bool and not isinstance(value, bool):
            problems.add(line, f"{where}.{key}", f"must be true or false, not {value!r}")
            ok = False
            continue
        elif kind == "str-list" and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            problems.add(line, f"{where}.{key}", f"must be a list of words, e.g. [radiology], not {value!r}")
            ok = False
            continue
        elif kind == "int-list" and (
            not isinstance(value, list)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            problems.add(
                line, f"{where}.{key}", f"must be a list of port numbers, e.g. [104, 5432], not {value!r}"
            )
            ok = False
            continue
        if kind == "str-list":
            value = [v.strip().lower() if key == "tags" else v.strip() for v in value]
            bad = [v for v in value if key == "tags" and not TAG_PATTERN.match(v)]
            if bad:
                problems.add(
                    line, f"{where}.{key}", f"{bad[0]!r} is not a tag: letters, digits, '-', '_', '.'"
                )
                ok = False
                continue
        if kind == "int-list":
            value = sorted(set(value))
        if isinstance(value, str) and key != "description":
            value = value.strip()
        values[key] = value
    return values if ok else None


def _model_problems(obj, exclude, line_of, where: str, problems: _Problems) -> None:
    try:
        obj.full_clean(exclude=list(exclude), validate_unique=False)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            problems.add(line_of(name), f"{where}.{name}", " ".join(messages))


@dataclass
class _Wanted:
    targets: list[tuple[dict, list[dict]]]
    policies: list[dict]


def _check(data, problems: _Problems) -> _Wanted:
    wanted = _Wanted(targets=[], policies=[])
    if data is None:
        problems.add(1, "file", "is empty: expected version, targets and policies")
        return wanted
    if not isinstance(data, _Map):
        problems.add(1, "file", "expected a mapping with version, targets and policies")
        return wanted
    for key in data:
        if key not in ("version", "targets", "policies"):
            problems.add(data.lines[key], key, "unknown (known: version, targets, policies)")
    if data.get("version") != FORMAT_VERSION:
        problems.add(
            data.lines.get("version", 1),
            "version",
            f"must be {FORMAT_VERSION} (this is pamsite's file format)",
        )
    for section in ("targets", "policies"):
        if section in data and not isinstance(data[section], list):
            problems.add(data.lines[section], section, "must be a list (each item starting with '- ')")
    target_names, slugs = {}, {}
    for i, item in enumerate(data.get("targets") or []):
        where = f"targets[{i}]"
        values = _fields(item, TARGET_KEYS, TARGET_REQUIRED, where, problems)
        if values is None:
            continue
        where = f"targets[{i}] ({values['name']})"
        name = values["name"]
        if name in target_names:
            problems.add(
                item.line, where, f"the target {name} is in the file twice (also line {target_names[name]})"
            )
            continue
        target_names[name] = item.line
        account_items = values.pop("accounts", None) or []
        values["_line"] = item.line
        values["_lines"] = item.lines
        _check_target(values, where, problems)
        accounts = []
        if not isinstance(account_items, list):
            problems.add(item.lines["accounts"], f"{where}.accounts", "must be a list of accounts")
            account_items = []
        for j, account_item in enumerate(account_items):
            awhere = f"{where}.accounts[{j}]"
            avalues = _fields(account_item, ACCOUNT_KEYS, ACCOUNT_REQUIRED, awhere, problems)
            if avalues is None:
                continue
            slug = avalues["slug"]
            awhere = f"{where}.accounts[{j}] ({slug})"
            if slug in slugs:
                problems.add(
                    account_item.line,
                    awhere,
                    f"the account {slug} is in the file twice (also line {slugs[slug]})",
                )
                continue
            slugs[slug] = account_item.line
            avalues["_line"], avalues["_lines"] = account_item.line, account_item.lines
            _check_account(avalues, values, awhere, problems)
            accounts.append(avalues)
        wanted.targets.append((values, accounts))
    policy_names = {}
    for i, item in enumerate(data.get("policies") or []):
        where = f"policies[{i}]"
        values = _fields(item, POLICY_KEYS, POLICY_REQUIRED, where, problems, types={"accounts": "str-list"})
        if values is None:
            continue
        where = f"policies[{i}] ({values['name']})"
        if values["name"] in policy_names:
            problems.add(item.line, where, f"the policy {values['name']} is in the file twice")
            continue
        policy_names[values["name"]] = item.line
        values["_line"], values["_lines"] = item.line, item.lines
        _check_policy(values, set(target_names), set(slugs), where, problems)
        wanted.policies.append(values)
    return wanted


def _line_of(values):
    return lambda name: values["_lines"].get(name, values["_line"])


def _check_target(values: dict, where: str, problems: _Problems) -> None:
    existing = Target.objects.filter(name=values["name"]).first()
    probe = Target(**{k: getattr(existing, k) for k in targets.TARGET_FIELDS}) if existing else Target()
    for key in targets.TARGET_FIELDS:
        if key in values:
            setattr(probe, key, values[key])
    if "port" not in values and not existing and probe.kind == Target.Kind.DATABASE:
        probe.port = 5432
    values["_kind"] = probe.kind
    _model_problems(probe, ["host_key_confirmed_by"], _line_of(values), where, problems)
    if values.get("host_key"):
        if not probe.has_host_key:
            problems.add(
                _line_of(values)("host_key"),
                f"{where}.host_key",
                f"a {probe.kind} target has no SSH host key",
            )
        else:
            try:
                values["host_key"] = ssh.parse_host_key(values["host_key"]).openssh
            except errors.TargetError as exc:
                problems.add(_line_of(values)("host_key"), f"{where}.host_key", str(exc))


def _check_account(values: dict, target_values: dict, where: str, problems: _Problems) -> None:
    line_of = _line_of(values)
    existing = Account.objects.select_related("target").filter(slug=values["slug"]).first()
    if existing and existing.target.name != target_values["name"]:
        problems.add(
            values["_line"],
            where,
            f"the account {existing.slug} belongs to the target {existing.target.name}: an account cannot "
            "move to another target (give the new one another slug)",
        )
        return
    if existing and values["kind"] != existing.kind:
        problems.add(
            line_of("kind"),
            f"{where}.kind",
            f"is {existing.kind} in pamsite: an account's kind cannot change",
        )
    probe = Account(target=Target(kind=target_values["_kind"]), slug=values["slug"], kind=values["kind"])
    if existing:
        for key in targets.ACCOUNT_FIELDS:
            setattr(probe, key, getattr(existing, key))
    for key in targets.ACCOUNT_FIELDS:
        if key in values:
            setattr(probe, key, values[key])
    if probe.kind != Account.Kind.DATABASE:
        probe.database_sslmode = ""
    elif "database_sslmode" not in values and not existing:
        probe.database_sslmode = SslMode.PREFER
    if probe.kind != Account.Kind.DATABASE:
        for key in ("database_name", "database_sslmode"):
            if values.get(key):
                problems.add(line_of(key), f"{where}.{key}", f"only for database accounts, not {probe.kind}")
    if probe.kind in Account.Kind.values and probe.kind not in probe.target.account_kinds():
        kinds = ", ".join(probe.target.account_kinds())
        problems.add(
            line_of("kind"), f"{where}.kind", f"a {target_values['_kind']} target takes only: {kinds}"
        )
    _model_problems(probe, ["target"], line_of, where, problems)


def _check_policy(values: dict, file_targets: set, file_slugs: set, where: str, problems: _Problems) -> None:
    line_of = _line_of(values)
    existing = AccessPolicy.objects.filter(name=values["name"]).first()
    probe = (
        AccessPolicy(**{k: getattr(existing, k) for k in services.POLICY_FIELDS})
        if existing
        else AccessPolicy()
    )
    for key in services.POLICY_FIELDS:
        if key in values:
            setattr(probe, key, values[key])
    _model_problems(probe, [], line_of, where, problems)
    known_groups = set(Group.objects.filter(name__in=values.get("groups", [])).values_list("name", flat=True))
    for name in values.get("groups", []):
        if name not in known_groups:
            problems.add(
                line_of("groups"),
                f"{where}.groups",
                f"no group {name!r} in pamsite: create it or map it first",
            )
    if "groups" in values and not values["groups"]:
        problems.add(line_of("groups"), f"{where}.groups", "name at least one group")
    covers = [
        values.get(k, list(getattr(existing, k).all()) if existing else []) for k in ("accounts", "targets")
    ]
    if not any(covers) and not probe.tags:
        problems.add(values["_line"], where, "covers nothing: give accounts, targets or tags")
    known = set(Account.objects.filter(slug__in=values.get("accounts", [])).values_list("slug", flat=True))
    for slug in values.get("accounts", []):
        if slug not in known and slug not in file_slugs:
            problems.add(
                line_of("accounts"), f"{where}.accounts", f"no account {slug!r} in pamsite or in the file"
            )
    known = set(Target.objects.filter(name__in=values.get("targets", [])).values_list("name", flat=True))
    for name in values.get("targets", []):
        if name not in known and name not in file_targets:
            problems.add(
                line_of("targets"), f"{where}.targets", f"no target {name!r} in pamsite or in the file"
            )


# --- The plan and its application ------------------------------------------------------------------


def _plan(wanted: _Wanted, *, pin_host_keys: bool) -> Outcome:
    changes, notes = [], []
    for values, accounts in wanted.targets:
        name = values["name"]
        fields = {k: values[k] for k in targets.TARGET_FIELDS if k in values}
        existing = Target.objects.filter(name=name).first()
        key_after = ""
        if existing is None:
            if fields.get("kind") == Target.Kind.DATABASE and "port" not in fields:
                fields["port"] = 5432
            changes.append(Change("create", f"target {name}", _as_changes(fields)))
        else:
            diff = _diff(existing, fields, targets.TARGET_FIELDS)
            if diff:
                changes.append(Change("change", f"target {name}", diff))
            moved = any(c["field"] in ("host", "port") for c in diff)
            key_after = "" if moved else existing.host_key
        wanted_key = values.get("host_key", "")
        if wanted_key and wanted_key != key_after:
            if pin_host_keys:
                changes.append(
                    Change(
                        "pin",
                        f"target {name}",
                        [{"field": "host_key", "from": "", "to": _fingerprint(wanted_key)}],
                    )
                )
            else:
                notes.append(
                    f"target {name}: the host key in the file ({_fingerprint(wanted_key)}) is not pinned; "
                    "pin it on the Targets page, or apply with --pin-host-keys --as PAM-ADMIN if you trust "
                    "this file"
                )
        for avalues in accounts:
            slug = avalues["slug"]
            afields = {k: avalues[k] for k in targets.ACCOUNT_FIELDS if k in avalues}
            account = Account.objects.filter(slug=slug).first()
            if account is None:
                changes.append(
                    Change("create", f"account {slug}", _as_changes({"kind": avalues["kind"], **afields}))
                )
                if avalues.get("active") is False:
                    changes.append(Change("deactivate", f"account {slug}"))
                continue
            diff = _diff(account, afields, targets.ACCOUNT_FIELDS)
            if diff:
                changes.append(Change("change", f"account {slug}", diff))
            if "active" in avalues and avalues["active"] != account.is_active:
                changes.append(Change("reactivate" if avalues["active"] else "deactivate", f"account {slug}"))
    for values in wanted.policies:
        name = values["name"]
        fields = {k: values[k] for k in (*services.POLICY_FIELDS, *services.POLICY_RELATIONS) if k in values}
        policy = AccessPolicy.objects.filter(name=name).first()
        if policy is None:
            changes.append(Change("create", f"policy {name}", _as_changes(fields)))
            if values.get("active") is False:
                changes.append(Change("deactivate", f"policy {name}"))
            continue
        diff = _diff(policy, fields, services.POLICY_FIELDS)
        for relation, label in (("groups", "name"), ("accounts", "slug"), ("targets", "name")):
            if relation in fields:
                before = sorted(getattr(policy, relation).values_list(label, flat=True))
                if before != sorted(fields[relation]):
                    diff.append({"field": relation, "from": before, "to": sorted(fields[relation])})
        if diff:
            changes.append(Change("change", f"policy {name}", diff))
        if "active" in values and values["active"] != policy.is_active:
            changes.append(Change("reactivate" if values["active"] else "deactivate", f"policy {name}"))
    return Outcome(changes=changes, notes=notes)


def _fingerprint(line: str) -> str:
    return ssh.parse_host_key(line).fingerprint


def _as_changes(fields: dict) -> list[dict]:
    return [{"field": k, "from": None, "to": v} for k, v in fields.items()]


def _diff(obj, fields: dict, names) -> list[dict]:
    return [
        {"field": k, "from": getattr(obj, k), "to": v}
        for k, v in fields.items()
        if k in names and getattr(obj, k) != v
    ]


def config_apply(
    *,
    text: str,
    source: str,
    acting_user: User | None,
    dry_run: bool = False,
    pin_host_keys: bool = False,
) -> Outcome:
    """Check the whole file, then make what it says true, in one transaction (nothing with
    ``dry_run``); returns the changes made (or that would be). Raises ``ConfigFileError`` with
    every problem found, by line and field, before anything is changed."""
    if acting_user is not None and not (acting_user.is_active and has_role(acting_user, Role.PAM_ADMIN)):
        raise ConfigFileError([f"{acting_user.get_username()} is not an active pam-admin: name one (--as)"])
    if pin_host_keys and acting_user is None:
        raise ConfigFileError(["Pinning host keys is a pam-admin's decision: name the pam-admin (--as USER)"])
    problems = _Problems(source)
    wanted = _check(_read(text, source), problems)
    if problems.items:
        raise ConfigFileError(problems.items)
    outcome = _plan(wanted, pin_host_keys=pin_host_keys)
    if dry_run or not outcome.changes:
        return outcome
    via = f"pam_config apply {source}"
    try:
        with transaction.atomic():
            _execute(wanted, outcome, acting_user=acting_user, via=via)
            audit_record(
                action="access.config.applied",
                actor=acting_user,
                details={
                    "file": source[:200],
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                    "changes": len(outcome.changes),
                    "by": acting_user.get_username()
                    if acting_user
                    else "manage.py pam_config (no user named)",
                },
            )
    except ValidationError as exc:
        raise ConfigFileError([f"{source}: nothing was changed: {' '.join(exc.messages)}"]) from None
    return outcome


def _execute(wanted: _Wanted, outcome: Outcome, *, acting_user: User | None, via: str) -> None:
    planned = {(c.action, c.what) for c in outcome.changes}
    reason = f"{via}" + (f" by {acting_user.get_username()}" if acting_user else "")
    for values, accounts in wanted.targets:
        name = values["name"]
        fields = {k: values[k] for k in targets.TARGET_FIELDS if k in values}
        if ("create", f"target {name}") in planned:
            if fields.get("kind") == Target.Kind.DATABASE and "port" not in fields:
                fields["port"] = 5432
            target = targets.target_create(acting_user=acting_user, values=fields, via=via)
        else:
            target = Target.objects.get(name=name)
            if ("change", f"target {name}") in planned:
                targets.target_update(target=target, acting_user=acting_user, values=fields, via=via)
        if ("pin", f"target {name}") in planned:
            targets.target_set_host_key(
                target=target, acting_user=acting_user, host_key=values["host_key"], via=via
            )
        for avalues in accounts:
            slug = avalues["slug"]
            afields = {k: avalues[k] for k in targets.ACCOUNT_FIELDS if k in avalues}
            if ("create", f"account {slug}") in planned:
                account = targets.account_create(
                    target=target,
                    acting_user=acting_user,
                    values={"slug": slug, "kind": avalues["kind"], **afields},
                    via=via,
                )
            else:
                account = Account.objects.get(slug=slug)
                if ("change", f"account {slug}") in planned:
                    targets.account_update(account=account, acting_user=acting_user, values=afields, via=via)
            if ("deactivate", f"account {slug}") in planned:
                services.account_deactivate(account=account, acting_user=acting_user, reason=reason, via=via)
            if ("reactivate", f"account {slug}") in planned:
                services.account_reactivate(account=account, acting_user=acting_user, reason=reason, via=via)
    for values in wanted.policies:
        name = values["name"]
        fields = {k: values[k] for k in services.POLICY_FIELDS if k in values}
        if "groups" in values:
            fields["groups"] = list(Group.objects.filter(name__in=values["groups"]))
        if "accounts" in values:
            fields["accounts"] = list(Account.objects.filter(slug__in=values["accounts"]))
        if "targets" in values:
            fields["targets"] = list(Target.objects.filter(name__in=values["targets"]))
        if ("create", f"policy {name}") in planned:
            policy = services.policy_create(acting_user=acting_user, values=fields, via=via)
        else:
            policy = AccessPolicy.objects.get(name=name)
            if ("change", f"policy {name}") in planned:
                services.policy_update(policy=policy, acting_user=acting_user, values=fields, via=via)
        if ("deactivate", f"policy {name}") in planned:
            services.policy_set_active(policy=policy, acting_user=acting_user, active=False, via=via)
        if ("reactivate", f"policy {name}") in planned:
            services.policy_set_active(policy=policy, acting_user=acting_user, active=True, via=via)
