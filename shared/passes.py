"""Signed, short-lived passes bound to a buyer (and a deal), checked by HMAC without any I/O.

One mechanism for two uses: the order token (proves who the buyer is on the order path without
reading the session from Redis) and the waiting room's queue pass (proves that this buyer was let
in to this deal). Each use has a ``kind`` of its own, which is part of the signed text and of the
salt, so a pass of one kind is never accepted as the other.

Format: ``<kind>.<user_id>.<deal_id or ->.<expires_at>.<signature>``, where the signature is
itsdangerous' HMAC-SHA256 over the text before it (key derived from SECRET_KEY and the kind).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer

MAX_PASS_LEN = 200  # a pass is ~80 characters; anything longer is refused before any hashing


@dataclass(frozen=True, slots=True)
class Pass:
    """What a verified pass says."""

    kind: str
    user_id: int
    deal_id: int | None
    expires_at: int  # unix seconds


class PassSigner:
    """Issues and verifies the passes of one kind (``order``, ``queue``) under one secret."""

    def __init__(self, secret_key: str, kind: str) -> None:
        if not kind.isalpha():
            raise ValueError("a pass kind is letters only")
        self.kind = kind
        self._signer = Signer(secret_key, salt=f"flashdeal.pass.{kind}", sep=".", digest_method=hashlib.sha256)

    def issue(self, user_id: int, deal_id: int | None, expires_at: int) -> str:
        """A pass for ``user_id`` (and ``deal_id``, None for any deal) valid until ``expires_at`` (unix seconds)."""
        deal = "-" if deal_id is None else str(deal_id)
        return self._signer.sign(f"{self.kind}.{user_id}.{deal}.{expires_at}").decode()

    def verify(self, token: str, now: float) -> Pass | None:
        """The pass ``token`` holds when its signature is good, its kind is this one and it has not expired."""
        if not token or len(token) > MAX_PASS_LEN:
            return None
        try:
            text = self._signer.unsign(token).decode()
        except (BadSignature, UnicodeDecodeError, ValueError):
            return None
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != self.kind:
            return None
        _, uid, deal, exp = parts
        if not (uid.isdigit() and exp.isdigit() and (deal == "-" or deal.isdigit())):
            return None
        expires_at = int(exp)
        if expires_at <= now:
            return None
        return Pass(self.kind, int(uid), None if deal == "-" else int(deal), expires_at)

    def verify_for(self, token: str, user_id: int | None, deal_id: int | None, now: float) -> Pass | None:
        """``verify``, and the pass must be bound to ``user_id`` (when given) and valid for ``deal_id``."""
        found = self.verify(token, now)
        if found is None:
            return None
        if user_id is not None and found.user_id != user_id:
            return None
        if found.deal_id is not None and found.deal_id != deal_id:
            return None
        return found
