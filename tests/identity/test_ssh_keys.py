"""Users' SSH public keys: what the account page accepts, refuses, shows and removes."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditEvent
from identity.models import SSHPublicKey
from identity.services import SSH_KEYS_PER_USER, ssh_key_add, ssh_key_remove
from identity.ssh_keys import PublicKeyError, parse_public_key
from tests.conftest import make_user, verified_client

pytestmark = pytest.mark.django_db


def keygen(directory: Path, *args: str, name: str = "id", comment: str = "alice@laptop") -> Path:
    """A key pair made by OpenSSH's ssh-keygen; returns the private key's path (public: .pub)."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", comment, "-f", str(path), *args],
        check=True,
        capture_output=True,
    )
    return path


def pub_line(private_path: Path) -> str:
    return Path(f"{private_path}.pub").read_text()


def ssh_keygen_fingerprint(pub_path: Path) -> str:
    """The fingerprint as `ssh-keygen -lf` prints it (second field)."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub_path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def openssh_line(private_key, comment: str = "made-with-cryptography") -> str:
    public = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} {comment}"


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def sk_public_key_line(key_type: str, comment: str = "alice@yubikey", application: bytes = b"ssh:") -> str:
    """A security-key (FIDO) public key line as ``ssh-keygen -t ed25519-sk`` or ``ecdsa-sk`` writes it.

    The line is public data only: the key pair's public half (made with cryptography here,
    on the security key in real life) and the FIDO application, "ssh:" by default.
    """
    if key_type == "sk-ssh-ed25519@openssh.com":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        point = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        blob = _ssh_string(key_type.encode()) + _ssh_string(point) + _ssh_string(application)
    else:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        blob = (
            _ssh_string(key_type.encode())
            + _ssh_string(b"nistp256")
            + _ssh_string(point)
            + _ssh_string(application)
        )
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}"


def add(user, line: str, name: str = "") -> SSHPublicKey:
    return ssh_key_add(user=user, name=name, public_key_line=line, request=None)


def refusal(user, line: str, field: str = "public_key") -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        add(user, line)
    assert field in caught.value.error_dict
    return caught.value.error_dict[field][0]


# --- What is accepted --------------------------------------------------------------


def test_a_key_made_by_ssh_keygen_is_added_with_the_fingerprint_openssh_prints(alice, tmp_path):
    private = keygen(tmp_path, "-t", "ed25519")
    key = add(alice, pub_line(private), name="work laptop")
    assert key.user == alice
    assert key.name == "work laptop"
    assert key.key_type == "ssh-ed25519"
    assert key.fingerprint == ssh_keygen_fingerprint(Path(f"{private}.pub"))
    assert key.last_used_at is None
    assert pub_line(private).split()[1] == key.key_base64


@pytest.mark.parametrize(
    ("make_key", "key_type"),
    [
        (ed25519.Ed25519PrivateKey.generate, "ssh-ed25519"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ecdsa-sha2-nistp384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ecdsa-sha2-nistp521"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "ssh-rsa"),
    ],
)
def test_every_supported_key_type_is_accepted(alice, make_key, key_type):
    key = add(alice, openssh_line(make_key()))
    assert key.key_type == key_type
    assert key.fingerprint.startswith("SHA256:")


def test_a_blank_name_takes_the_keys_comment(alice):
    key = add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate(), comment="alice@pacs-console"))
    assert key.name == "alice@pacs-console"


def test_adding_is_audited_with_name_fingerprint_and_algorithm_but_not_the_key(alice):
    line = openssh_line(ed25519.Ed25519PrivateKey.generate())
    key = add(alice, line, name="laptop")
    event = AuditEvent.objects.get(action="identity.ssh_key.added")
    assert event.actor == alice
    assert event.details == {"name": "laptop", "fingerprint": key.fingerprint, "algorithm": "ssh-ed25519"}
    assert line.split()[1] not in f"{event.details} {event.object_repr}"


# --- What is refused, and why ------------------------------------------------------


def test_a_pasted_private_key_is_refused_with_a_pointer_to_the_pub_file(alice, tmp_path):
    private = keygen(tmp_path, "-t", "ed25519")
    error = refusal(alice, private.read_text())
    assert error.code == "private_key"
    assert ".pub" in error.message
    assert not SSHPublicKey.objects.exists()


def test_a_pem_rsa_private_key_is_refused_as_a_private_key(alice, tmp_path):
    private = keygen(tmp_path, "-t", "rsa", "-b", "2048", "-m", "PEM")
    assert private.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert refusal(alice, private.read_text()).code == "private_key"


def test_garbage_is_refused(alice):
    error = refusal(alice, "hello, this is my key")
    assert error.code == "not_a_key"
    assert "ssh-ed25519" in error.message


def test_an_empty_paste_is_refused(alice):
    assert refusal(alice, "   ").code == "empty"


def test_a_key_cut_short_is_refused(alice, tmp_path):
    key_type, data, comment = pub_line(keygen(tmp_path, "-t", "ed25519")).split()
    for cut in (data[:-1], data[:-4], data[:30], data[:-8] + "===="):
        error = refusal(alice, f"{key_type} {cut} {comment}")
        assert error.code in {"bad_data", "type_mismatch"}
        assert cut not in error.message


def test_the_key_type_must_match_the_key_data(alice, tmp_path):
    _, data, _ = pub_line(keygen(tmp_path, "-t", "ed25519")).split()
    error = refusal(alice, f"ssh-rsa {data}")
    assert error.code == "type_mismatch"
    assert "not a ssh-rsa key" in error.message


def test_data_after_the_key_is_refused(alice, tmp_path):
    import base64

    key_type, data, _ = pub_line(keygen(tmp_path, "-t", "ed25519")).split()
    padded = base64.b64encode(base64.b64decode(data) + b"\x00\x00\x00\x00").decode()
    assert refusal(alice, f"{key_type} {padded}").code == "bad_data"


def test_an_rsa_key_under_2048_bits_is_refused_as_too_weak(alice, tmp_path):
    private = keygen(tmp_path, "-t", "rsa", "-b", "1024")
    error = refusal(alice, pub_line(private))
    assert error.code == "weak_key"
    assert "1024 bits" in error.message and "2048" in error.message


def test_a_certificate_is_refused(alice, tmp_path):
    ca = keygen(tmp_path, "-t", "ed25519", name="ca")
    user_key = keygen(tmp_path, "-t", "ed25519", name="user")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "alice", "-n", "alice", f"{user_key}.pub"],
        check=True,
        capture_output=True,
    )
    certificate = Path(f"{user_key}-cert.pub").read_text()
    assert certificate.startswith("ssh-ed25519-cert-v01@openssh.com ")
    error = refusal(alice, certificate)
    assert error.code == "certificate"
    assert "certificate" in error.message


@pytest.mark.parametrize("key_type", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_security_key_fido_keys_are_accepted_with_the_fingerprint_openssh_prints(alice, tmp_path, key_type):
    line = sk_public_key_line(key_type)
    pub = tmp_path / "id_sk.pub"
    pub.write_text(line + "\n")

    key = add(alice, line)

    assert key.key_type == key_type
    assert key.key_base64 == line.split()[1]
    assert key.name == "alice@yubikey"
    assert key.fingerprint == ssh_keygen_fingerprint(pub)


def test_a_damaged_security_key_and_a_dsa_key_are_refused_clearly(alice):
    cut_short = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA== me@yubikey"
    assert refusal(alice, cut_short).code == "bad_data"
    no_application = sk_public_key_line("sk-ecdsa-sha2-nistp256@openssh.com").split()[1]
    blob = base64.b64decode(no_application)[: -len(_ssh_string(b"ssh:"))]
    truncated = f"sk-ecdsa-sha2-nistp256@openssh.com {base64.b64encode(blob).decode()}"
    assert refusal(alice, truncated).code == "bad_data"
    assert "DSA" in refusal(alice, "ssh-dss AAAAB3NzaC1kc3MAAACBAA== old@box").message


def test_authorized_keys_options_are_refused_with_a_hint(alice):
    line = 'from="10.0.0.0/8" ' + openssh_line(ed25519.Ed25519PrivateKey.generate())
    error = refusal(alice, line)
    assert error.code == "options"


def test_the_ssh2_format_is_refused_with_the_conversion_command(alice, tmp_path):
    private = keygen(tmp_path, "-t", "ed25519")
    ssh2 = subprocess.run(
        ["ssh-keygen", "-e", "-f", f"{private}.pub"], check=True, capture_output=True, text=True
    ).stdout
    error = refusal(alice, ssh2)
    assert error.code == "wrong_format"
    assert "ssh-keygen -i" in error.message


def test_two_keys_at_once_are_refused(alice):
    lines = "\n".join(openssh_line(ed25519.Ed25519PrivateKey.generate()) for _ in range(2))
    assert refusal(alice, lines).code == "several_lines"


def test_a_key_belongs_to_one_person(alice, bob):
    line = openssh_line(ed25519.Ed25519PrivateKey.generate())
    add(alice, line)
    error = refusal(bob, line)
    assert error.code == "taken"
    assert "alice" not in error.message.lower()
    # The same key with another comment is the same key.
    key_type, data, _ = line.split()
    assert refusal(bob, f"{key_type} {data} bob@elsewhere").code == "taken"
    assert SSHPublicKey.objects.get().user == alice


def test_adding_the_same_key_twice_says_so(alice):
    line = openssh_line(ed25519.Ed25519PrivateKey.generate())
    add(alice, line, name="laptop")
    error = refusal(alice, line)
    assert error.code == "duplicate"
    assert "laptop" in error.message


def test_a_name_is_used_once_per_user(alice):
    add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="laptop")
    with pytest.raises(ValidationError) as caught:
        add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="laptop")
    assert "name" in caught.value.error_dict


def test_a_user_has_at_most_twenty_keys(alice):
    for n in range(SSH_KEYS_PER_USER):
        add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()), name=f"key {n}")
    error = refusal(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()))
    assert error.code == "too_many"
    assert SSHPublicKey.objects.filter(user=alice).count() == SSH_KEYS_PER_USER


def test_refusal_messages_never_repeat_the_pasted_text(tmp_path):
    private = keygen(tmp_path, "-t", "ed25519")
    body = private.read_text()
    with pytest.raises(PublicKeyError) as caught:
        parse_public_key(body)
    for line in body.splitlines()[1:-1]:
        assert line not in str(caught.value)


# --- Removing ----------------------------------------------------------------------


def test_a_user_removes_her_own_key_and_it_is_audited(alice):
    key = add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="old laptop")
    removed = ssh_key_remove(user=alice, key_pk=key.pk, request=None)
    assert removed.name == "old laptop"
    assert not SSHPublicKey.objects.exists()
    event = AuditEvent.objects.get(action="identity.ssh_key.removed")
    assert event.actor == alice
    assert event.object_type == "identity.sshpublickey"
    assert event.details["fingerprint"] == key.fingerprint


# --- The account page --------------------------------------------------------------


def test_the_account_page_explains_how_to_connect(client, alice, settings):
    settings.GATEWAY_PUBLIC_HOST = "pam-gw.hospital.example"
    settings.GATEWAY_PUBLIC_PORT = 2022
    response = verified_client(client, alice).get(reverse("identity:account"))
    assert response.status_code == 200
    assert b"SSH keys for the gateway" in response.content
    assert b"ssh -p 2022 alice:&lt;account&gt;@pam-gw.hospital.example" in response.content


def test_a_key_added_on_the_page_shows_the_fingerprint_ssh_keygen_prints(client, alice, tmp_path):
    private = keygen(tmp_path, "-t", "ed25519")
    client = verified_client(client, alice)
    response = client.post(
        reverse("identity:ssh_key_add"), {"name": "work laptop", "public_key": pub_line(private)}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("identity:account") + "#ssh-keys"
    page = client.get(reverse("identity:account")).content.decode()
    assert ssh_keygen_fingerprint(Path(f"{private}.pub")) in page
    assert "work laptop" in page and "ssh-ed25519" in page
    assert SSHPublicKey.objects.get().user == alice


def test_a_refused_key_shows_the_reason_next_to_the_field(client, alice, tmp_path):
    private = keygen(tmp_path, "-t", "rsa", "-b", "1024")
    response = verified_client(client, alice).post(
        reverse("identity:ssh_key_add"), {"name": "old", "public_key": pub_line(private)}
    )
    assert response.status_code == 400
    assert "This RSA key has only 1024 bits" in response.content.decode()
    # The public key stays in the form, to be corrected.
    assert pub_line(private).split()[1] in response.content.decode()
    assert not SSHPublicKey.objects.exists()


def test_a_pasted_private_key_is_not_sent_back_in_the_page(client, alice, tmp_path):
    private = keygen(tmp_path, "-t", "ed25519").read_text()
    response = verified_client(client, alice).post(
        reverse("identity:ssh_key_add"), {"name": "oops", "public_key": private}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "That is a private key" in page
    for line in private.splitlines()[1:-1]:
        assert line not in page


def test_the_remove_button_removes_the_key(client, alice):
    key = add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="laptop")
    client = verified_client(client, alice)
    assert (
        reverse("identity:ssh_key_remove", args=[key.pk]).encode()
        in client.get(reverse("identity:account")).content
    )
    response = client.post(reverse("identity:ssh_key_remove", args=[key.pk]))
    assert response.status_code == 302
    assert not SSHPublicKey.objects.exists()


def test_another_users_key_cannot_be_removed(client, alice, bob):
    bobs = add(bob, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="bob's laptop")
    response = verified_client(client, alice).post(reverse("identity:ssh_key_remove", args=[bobs.pk]))
    assert response.status_code == 404
    assert SSHPublicKey.objects.filter(pk=bobs.pk).exists()
    assert not AuditEvent.objects.filter(action="identity.ssh_key.removed").exists()


def test_other_users_keys_are_not_shown(client, alice, bob):
    bobs = add(bob, openssh_line(ed25519.Ed25519PrivateKey.generate()), name="bob's laptop")
    page = verified_client(client, alice).get(reverse("identity:account")).content.decode()
    assert bobs.fingerprint not in page


def test_keys_are_added_and_removed_by_post_only(client, alice):
    key = add(alice, openssh_line(ed25519.Ed25519PrivateKey.generate()))
    client = verified_client(client, alice)
    assert client.get(reverse("identity:ssh_key_add")).status_code == 405
    assert client.get(reverse("identity:ssh_key_remove", args=[key.pk])).status_code == 405
    assert SSHPublicKey.objects.filter(pk=key.pk).exists()


def test_a_password_only_session_cannot_add_a_key(client, db):
    user = make_user("halfway", "requester")
    client.force_login(user)  # password done, no code
    line = openssh_line(ed25519.Ed25519PrivateKey.generate())
    response = client.post(reverse("identity:ssh_key_add"), {"name": "x", "public_key": line})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("identity:verify"))
    assert not SSHPublicKey.objects.exists()
