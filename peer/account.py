"""The account as its owner changes it: password, e-mail, deletion (issue 15, "account").

A password change needs the current password twice over: the keystore is opened with it first (a
wrong one is refused here, before the server counts a failed login), then the server checks it,
changes the hash and signs the account out everywhere. This device then re-seals its keystore
under the new password (same keys, same storage key) and logs in again, so it stays connected
while every other session of the account has to log in with the new password.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import ValidationError

from crypto.errors import KeystoreLocked
from crypto.keystore import change_keystore_password, load_keystore
from peer.errors import ConfigError, WrongPassword
from signalling.protocol import UserMe, UserUpdate

if TYPE_CHECKING:
    from peer.node import Peer


async def check_password(peer: Peer, password: str) -> None:
    """Raise WrongPassword unless `password` opens this device's keystore."""
    try:
        await asyncio.to_thread(load_keystore, peer.profile.keystore_path, password)
    except KeystoreLocked as e:
        raise WrongPassword("that is not the current password") from e


async def change_password(peer: Peer, old: str, new: str) -> None:
    if old == new:
        raise ConfigError("the new password is the same as the current one")
    try:
        update = UserUpdate(password=new, current_password=old)
    except ValidationError as e:
        raise ConfigError(f"the new password is not usable: {e.errors()[0]['msg']}") from e
    await check_password(peer, old)
    await peer.server.update_me(update)
    await asyncio.to_thread(change_keystore_password, peer.profile.keystore_path, old, new)
    # The new pair is this device's, sealed into the profile by the peer.
    await peer.server.login_again(peer.me.username, new, peer.me.device_id)
    await peer.session.resume()


async def change_email(peer: Peer, email: str, password: str) -> UserMe:
    try:
        update = UserUpdate(email=email, current_password=password)
    except ValidationError as e:
        raise ConfigError(f"{email!r} is not an e-mail address") from e
    await check_password(peer, password)
    return await peer.server.update_me(update)


async def delete_account(peer: Peer, password: str, typed: str) -> None:
    """Delete the account on the server, after the password and the username typed as confirmation."""
    if typed != peer.me.username:
        raise ConfigError(f"type your username ({peer.me.username}) to confirm the deletion")
    await check_password(peer, password)
    await peer.delete_account()


async def set_display_name(peer: Peer, name: str | None) -> UserMe:
    """The name shown beside my username to my contacts (None or empty clears it)."""
    try:
        update = UserUpdate(display_name=(name or "").strip())
    except ValidationError as e:
        raise ConfigError("a display name can be at most 64 characters") from e
    return await peer.server.update_me(update)


async def me(peer: Peer) -> UserMe:
    return await peer.server.me()
