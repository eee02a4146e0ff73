"""DKIM signatures (dkimpy), so that mailbox providers can check From and the
List-Unsubscribe headers: Gmail and Yahoo want the one-click headers covered."""
from __future__ import annotations

from collections.abc import Mapping

from .config import Config
from .errors import InputError

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
                  b"content-type", b"list-unsubscribe", b"list-unsubscribe-post", b"list-id",
                  b"feedback-id")


class DkimSigner:
    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        self.private_key = private_key

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front."""
        import dkim  # here: dkimpy brings dnspython, which a send without [dkim] does not need
        header = dkim.sign(message, self.selector, self.domain, self.private_key,
                           canonicalize=(b"relaxed", b"relaxed"), include_headers=list(SIGNED_HEADERS))
        return header + message


def dkim_signer(config: Config, from_domain: str, environ: Mapping[str, str]) -> DkimSigner | None:
    """The configured signer, or None when [dkim] selector is empty. The key comes from the environment."""
    settings = config.dkim
    if not settings.selector:
        return None
    pem = environ.get(settings.private_key_env, "")
    if not pem.strip():
        raise InputError(f"{config.path}: [dkim] selector is set but ${settings.private_key_env} is empty",
                         hint=f"export {settings.private_key_env}=\"$(cat dkim-private.pem)\" (the key never lives "
                              "in config.toml), or remove the [dkim] selector")
    import dkim
    signer = DkimSigner(settings.selector, settings.domain or from_domain, pem.encode("ascii", "replace"))
    try:
        signer.sign(b"From: a@b.example\r\nSubject: probe\r\n\r\nprobe\r\n")
    except (dkim.DKIMException, ValueError) as exc:
        raise InputError(f"${settings.private_key_env} is not a usable DKIM private key: {exc}",
                         hint="give an RSA private key in PEM form") from None
    return signer
