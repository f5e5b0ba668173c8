"""Accounts: create, find, update and delete users.

Usernames are unique without regard to case (an index on lower(username)) and to look-alike
letters (`name_key`, store.names); e-mail addresses are stored lower-cased. Functions take the
caller's session and flush, never commit: the caller owns the transaction. Deleting an account
removes everything it owns in one transaction, and retires its device ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.errors import EmailTaken, NotFound, UsernameTaken
from store.models import Blob, Contact, Device, MailboxEntry, RefreshToken, RetiredDevice, User, utcnow
from store.names import name_key


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def ping(session: AsyncSession) -> None:
    await session.execute(text("SELECT 1"))


async def get(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_by_username(session: AsyncSession, username: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.username) == username.lower()))
    return result.scalar_one_or_none()


async def name_taken(session: AsyncSession, username: str) -> str | None:
    """The existing name that `username` clashes with: the same ignoring case, or one that looks
    the same (store.names); None when it is free."""
    query = select(User.username).where(
        or_(User.name_key == name_key(username), func.lower(User.username) == username.lower())
    )
    return (await session.execute(query.limit(1))).scalar_one_or_none()


async def _username_taken(session: AsyncSession, username: str) -> bool:
    return await name_taken(session, username) is not None


async def _email_taken(session: AsyncSession, email: str, *, other_than: int | None = None) -> bool:
    query = select(User.id).where(User.email == normalise_email(email))
    if other_than is not None:
        query = query.where(User.id != other_than)
    return (await session.execute(query)).first() is not None


async def create(
    session: AsyncSession,
    *,
    username: str,
    email: str,
    password_hash: bytes,
    address: str | None = None,
    port: int | None = None,
) -> User:
    """Insert a user; raises UsernameTaken or EmailTaken (checked first, enforced by the database)."""
    if await _username_taken(session, username):
        raise UsernameTaken(username)
    if await _email_taken(session, email):
        raise EmailTaken(email)
    user = User(
        username=username,
        email=normalise_email(email),
        password_hash=password_hash,
        name_key=name_key(username),
        last_address=address,
        last_port=port,
        created_at=utcnow(),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        await session.rollback()
        if await _username_taken(session, username):
            raise UsernameTaken(username) from exc
        raise EmailTaken(email) from exc
    return user


async def record_login(
    session: AsyncSession, user: User, *, address: str | None, port: int | None, when: datetime | None = None
) -> None:
    user.last_address = address
    user.last_port = port
    user.last_seen = when or utcnow()
    await session.flush()


async def touch_last_seen(session: AsyncSession, user_id: int, when: datetime | None = None) -> None:
    """For the hub: a device of this user just went away."""
    await session.execute(update(User).where(User.id == user_id).values(last_seen=when or utcnow()))


async def change_email(session: AsyncSession, user: User, email: str) -> None:
    if await _email_taken(session, email, other_than=user.id):
        raise EmailTaken(email)
    user.email = normalise_email(email)
    user.updated_at = utcnow()
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise EmailTaken(email) from exc


async def change_password(session: AsyncSession, user: User, password_hash: bytes) -> None:
    """New hash, and a new token version so every outstanding access token stops working."""
    user.password_hash = password_hash
    user.token_version += 1
    user.updated_at = utcnow()
    await session.flush()


async def bump_token_version(session: AsyncSession, user: User) -> int:
    user.token_version += 1
    await session.flush()
    return user.token_version


async def search(
    session: AsyncSession, prefix: str, *, exclude_user_id: int, skip: int = 0, limit: int = 50
) -> Sequence[User]:
    """Users whose name starts with `prefix` (any case), by name, without the asker."""
    pattern = _escape_like(prefix.lower()) + "%"
    query = (
        select(User)
        .where(func.lower(User.username).like(pattern, escape="\\"), User.id != exclude_user_id)
        .order_by(func.lower(User.username), User.id)
        .offset(skip)
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def delete_account(session: AsyncSession, user_id: int) -> None:
    """Remove the user and all it owns: devices, contacts both ways, mailbox rows, tokens, blobs.

    The schema cascades too; the explicit deletes keep this true where foreign keys are off.
    """
    if await session.get(User, user_id) is None:
        raise NotFound(f"user {user_id}")
    device_ids = select(Device.device_id).where(Device.user_id == user_id).scalar_subquery()
    await session.execute(
        delete(MailboxEntry).where(
            or_(
                MailboxEntry.recipient_user == user_id,
                MailboxEntry.sender_user == user_id,
                MailboxEntry.recipient_device.in_(device_ids),
            )
        )
    )
    await session.execute(
        delete(Contact).where(or_(Contact.owner_id == user_id, Contact.friend_id == user_id))
    )
    # Its device ids are retired, never published again (a peer pinned their keys).
    await session.execute(
        insert(RetiredDevice).from_select(
            ["device_id"], select(Device.device_id).where(Device.user_id == user_id)
        )
    )
    await session.execute(delete(Device).where(Device.user_id == user_id))
    await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user_id))
    await session.execute(delete(Blob).where(Blob.owner_id == user_id))
    await session.execute(delete(User).where(User.id == user_id))
    session.expunge_all()
