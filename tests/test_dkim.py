"""DKIM: every message is signed, the one-click headers included, and the signature verifies."""
from __future__ import annotations

import base64

import dkim
import pytest
from conftest import Project
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def keypair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def with_dkim(project: Project) -> None:
    project.write("config.toml", project.base_config + '\n[dkim]\nselector = "mail"\n')


@pytest.mark.parametrize("render_workers", ["0", "2"])
def test_messages_are_signed_and_verify_with_the_published_key(project: Project, render_workers: str) -> None:
    pem, record = keypair()
    with_dkim(project)
    result = project.run("send", str(project.campaign), "--yes",
                         env={"MAILER_DKIM_KEY": pem, "MAILER_RENDER_WORKERS": render_workers})
    assert result.exit_code == 0, result.output
    messages = project.messages()
    assert len(messages) == 2

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mail._domainkey.acme.example." else None

    for raw in messages:
        assert raw.startswith(b"DKIM-Signature:")
        assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")  # CRLF only: sent as is over SMTP
        assert dkim.verify(raw, dnsfunc=dns)
        header = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").lower()
        signed = header.split(b" h=", 1)[1].split(b";", 1)[0]
        # Gmail reads Feedback-ID only when the signature covers it
        for name in (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id"):
            assert name in [part.strip() for part in signed.split(b":")]
        tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                               b"List-Unsubscribe-Post: List-Unsubscribe=Nope")
        assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_missing_or_broken_key_is_a_clear_error_before_sending(project: Project) -> None:
    with_dkim(project)
    missing = project.send()
    assert missing.exit_code == 2 and "$MAILER_DKIM_KEY is empty" in missing.output
    broken = project.run("send", str(project.campaign), "--yes", env={"MAILER_DKIM_KEY": "not a key"})
    assert broken.exit_code == 2 and "not a usable DKIM private key" in broken.output
    assert project.messages() == []
