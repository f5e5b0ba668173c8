"""Prekeys (PQXDH): publish and refill yours, see your stock, claim a contact's bundles.

The server checks shapes only (kinds, sizes, base64url); signatures are verified by the claimer
against the identity key it pinned. A claim deletes the one-time keys it hands out in the same
transaction that answers, so no key goes to two initiators. Claims are allowed for your own
devices, for accepted contacts and for members of a group you are in (sender keys go over the
ratchet between co-members who are not contacts), unless the owner blocked you; a stranger cannot
drain a device's one-time stock. Whoever may claim takes at most `prekey_claims_per_device`
one-time keys of one device per window (`signalling.claim_limits`); past that the bundle carries
the signed and last-resort keys only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from signalling.claim_limits import ClaimLimits
from signalling.deps import CurrentUser, Session, UserIdPath
from signalling.errors import Conflict, Forbidden, Invalid, NotFound
from signalling.openapi import errors
from signalling.protocol import (
    ApiErrorCode,
    PrekeyBundleOut,
    PrekeyClaimIn,
    PrekeyKindName,
    PrekeyOut,
    PrekeysIn,
    PrekeyStockOut,
    b64decode,
    b64encode,
)
from store import accounts
from store import blocks as block_store
from store import devices as device_store
from store import groups as group_store
from store import prekeys as prekey_store
from store.errors import NotFound as StoreNotFound
from store.errors import QuotaExceeded
from store.reach import is_accepted_contact

router = APIRouter(tags=["prekeys"])

_KIND = {
    PrekeyKindName.SIGNED: prekey_store.Kind.SIGNED,
    PrekeyKindName.ONE_TIME: prekey_store.Kind.ONE_TIME,
    PrekeyKindName.KEM_LAST_RESORT: prekey_store.Kind.KEM_LAST_RESORT,
    PrekeyKindName.KEM_ONE_TIME: prekey_store.Kind.KEM_ONE_TIME,
}
_NAME = {v: k for k, v in _KIND.items()}
_PUBLIC_BYTES = {
    PrekeyKindName.SIGNED: 32,
    PrekeyKindName.ONE_TIME: 32,
    PrekeyKindName.KEM_LAST_RESORT: 1184,
    PrekeyKindName.KEM_ONE_TIME: 1184,
}
SIGNATURE_BYTES = 64


def _out(p: prekey_store.PrekeyIn) -> PrekeyOut:
    return PrekeyOut(
        kind=_NAME[p.kind],
        key_id=p.key_id,
        public_key=b64encode(p.public_key),
        created_at=p.signed_at,
        signature=b64encode(p.signature),
    )


def _stock_out(device_id: str, s: prekey_store.Stock) -> PrekeyStockOut:
    return PrekeyStockOut(
        device_id=device_id,
        one_time=s.one_time,
        kem_one_time=s.kem_one_time,
        signed_prekey_id=s.signed_prekey_id,
        kem_last_resort_id=s.kem_last_resort_id,
        held_ids=list(s.held_ids),
    )


async def _own_device(session: Session, user_id: int, device_id: str) -> None:
    device = await device_store.get_active(session, device_id)
    if device is None or device.user_id != user_id:
        raise NotFound(f"You have no active device '{device_id}'.", code=ApiErrorCode.DEVICE_NOT_FOUND)


@router.post(
    "/me/devices/{device_id}/prekeys",
    response_model=PrekeyStockOut,
    summary="Publish or refill this device's prekeys; answers the stock the server now holds",
    responses=errors(
        e404="You have no active device with that id (`device_not_found`).",
        e409="A key id reused with other bytes (`prekey_id_taken`), or a full stock (`prekey_stock_full`).",
    ),
)
async def publish(
    device_id: str, body: PrekeysIn, user: CurrentUser, request: Request, session: Session
) -> PrekeyStockOut:
    await _own_device(session, user.id, device_id)
    keys = []
    for i, p in enumerate(body.prekeys):
        public_key, signature = b64decode(p.public_key), b64decode(p.signature)
        if len(public_key) != _PUBLIC_BYTES[p.kind]:
            raise Invalid(
                f"prekeys[{i}]: a {p.kind} public key is {_PUBLIC_BYTES[p.kind]} bytes, "
                f"got {len(public_key)}."
            )
        if len(signature) != SIGNATURE_BYTES:
            raise Invalid(
                f"prekeys[{i}]: signature must be {SIGNATURE_BYTES} bytes (Ed25519), got {len(signature)}."
            )
        keys.append(prekey_store.PrekeyIn(_KIND[p.kind], p.key_id, public_key, signature, p.created_at))
    if len({(k.kind, k.key_id) for k in keys}) != len(keys):
        raise Invalid("prekeys: the same kind and key_id appear twice.")
    try:
        stock = await prekey_store.publish(
            session,
            user.id,
            device_id,
            keys,
            max_one_time=request.app.state.settings.max_one_time_prekeys,
            replace=body.replace,
        )
    except prekey_store.PrekeyConflict as exc:
        raise Conflict(f"{exc} Use a new key id.", code=ApiErrorCode.PREKEY_ID_TAKEN) from exc
    except QuotaExceeded as exc:
        raise Conflict(f"Too many one-time prekeys: {exc}.", code=ApiErrorCode.PREKEY_STOCK_FULL) from exc
    await session.commit()
    return _stock_out(device_id, stock)


@router.get(
    "/me/devices/{device_id}/prekeys",
    response_model=PrekeyStockOut,
    summary="How many one-time prekeys the server still holds for this device",
    responses=errors(e404="You have no active device with that id (`device_not_found`)."),
)
async def stock(device_id: str, user: CurrentUser, session: Session) -> PrekeyStockOut:
    await _own_device(session, user.id, device_id)
    return _stock_out(device_id, await prekey_store.stock(session, device_id))


async def _may_claim(session: Session, claimer: int, owner: int) -> bool:
    """Yourself, an accepted contact, or a member of a common group the owner has not blocked."""
    if claimer == owner:
        return True
    conn = await session.connection()
    if await is_accepted_contact(conn, claimer, owner):
        return True
    return await group_store.share_a_group(conn, claimer, owner) and not await block_store.is_blocked(
        session, owner, claimer
    )


@router.post(
    "/users/{user_id}/prekey-bundles",
    response_model=list[PrekeyBundleOut],
    summary="Claim a prekey bundle for each (or each named) active device of a user (uses up one-time keys)",
    responses=errors(
        e403="Not yourself, not an accepted contact and in no group with you, or they blocked you"
        " (`not_a_contact`).",
        e404="No such user (`user_not_found`), no such active device (`device_not_found`), or a named device"
        " has published no prekeys (`prekeys_not_published`).",
    ),
)
async def claim(
    user_id: UserIdPath, body: PrekeyClaimIn, user: CurrentUser, request: Request, session: Session
) -> list[PrekeyBundleOut]:
    if await accounts.get(session, user_id) is None:
        raise NotFound(f"There is no user with id {user_id}.", code=ApiErrorCode.USER_NOT_FOUND)
    if not await _may_claim(session, user.id, user_id):
        raise Forbidden(
            f"User {user_id} is not an accepted contact of yours nor in a group with you.",
            code=ApiErrorCode.NOT_A_CONTACT,
        )
    limits: ClaimLimits = request.app.state.claim_limits
    devices = await device_store.list_active(session, user_id)
    wanted = body.device_ids
    if wanted is not None:
        unknown = set(wanted) - {d.device_id for d in devices}
        if unknown:
            raise NotFound(
                f"User {user_id} has no active device {sorted(unknown)[0]!r}.",
                code=ApiErrorCode.DEVICE_NOT_FOUND,
            )
        devices = [d for d in devices if d.device_id in set(wanted)]
    own = user_id == user.id
    out = []
    for device in devices:
        # Your own devices are not counted; anyone else past the quota gets no one-time key.
        counted = not own and limits.reserve(user.id, device.device_id)
        try:
            bundle = await prekey_store.claim(session, device.device_id, one_time=own or counted)
        except StoreNotFound as exc:
            if counted:
                limits.release(user.id, device.device_id)
            if wanted is not None:
                raise NotFound(
                    f"Device {device.device_id!r} has not published prekeys yet.",
                    code=ApiErrorCode.PREKEYS_NOT_PUBLISHED,
                ) from exc
            continue  # an older peer without prekeys: the sender uses the envelope format for it
        if counted and not bundle.took_one_time:
            limits.release(user.id, device.device_id)
        out.append(
            PrekeyBundleOut(
                user_id=user_id,
                device_id=device.device_id,
                identity_key=b64encode(device.identity_key),
                signed_prekey=_out(bundle.signed_prekey),
                kem_prekey=_out(bundle.kem_prekey),
                one_time_prekey=None if bundle.one_time_prekey is None else _out(bundle.one_time_prekey),
            )
        )
    await session.commit()
    return out
