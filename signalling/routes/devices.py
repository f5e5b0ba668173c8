"""Device key bundles: publish yours, list someone's active devices, revoke one of yours.

The server checks only the shape (base64url, key and signature sizes); the signature is verified by
peers against the identity key they pin, never by the server (see docs/protocol.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from signalling.deps import CurrentUser, Session, UserIdPath
from signalling.errors import Conflict, NotFound
from signalling.openapi import errors
from signalling.protocol import ApiErrorCode, CloseCode, DeviceBundleIn, DeviceOut, b64decode, b64encode
from store import accounts
from store import devices as device_store
from store.devices import Bundle
from store.errors import DeviceIdTaken, TooManyDevices
from store.errors import NotFound as StoreNotFound
from store.models import Device

router = APIRouter(tags=["devices"])


def device_out(device: Device) -> DeviceOut:
    return DeviceOut(
        user_id=device.user_id,
        device_id=device.device_id,
        identity_key=b64encode(device.identity_key),
        encryption_key=b64encode(device.encryption_key),
        created_at=device.signed_at,
        signature=b64encode(device.signature),
        revoked=device.revoked_at is not None,
    )


def _bundle(body: DeviceBundleIn) -> Bundle:
    """The sizes and encodings are the model's (and so the schema's): here they only decode."""
    return Bundle(
        body.device_id,
        b64decode(body.identity_key),
        b64decode(body.encryption_key),
        b64decode(body.signature),
        body.created_at,
    )


@router.post(
    "/me/devices",
    response_model=DeviceOut,
    status_code=status.HTTP_201_CREATED,
    summary="Publish this device's key bundle (publishing the same bundle again answers 200)",
    responses={
        200: {"model": DeviceOut, "description": "This exact bundle was already published."},
        **errors(e409="The device id is taken or was revoked (`device_taken`), or too many devices."),
    },
)
async def publish(
    body: DeviceBundleIn, user: CurrentUser, request: Request, response: Response, session: Session
) -> DeviceOut:
    bundle = _bundle(body)
    try:
        device, created = await device_store.publish(
            session, user.id, bundle, max_devices=request.app.state.settings.max_devices_per_user
        )
    except DeviceIdTaken as exc:
        raise Conflict(
            f"The device id '{body.device_id}' is already used (or was revoked); make a new device id.",
            code=ApiErrorCode.DEVICE_TAKEN,
        ) from exc
    except TooManyDevices as exc:
        raise Conflict(
            "This account has the most active devices allowed; revoke one first.",
            code=ApiErrorCode.TOO_MANY_DEVICES,
        ) from exc
    await session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return device_out(device)


@router.get(
    "/users/{user_id:int}/devices",
    response_model=list[DeviceOut],
    summary="A user's active (not revoked) device bundles",
    responses=errors(e404="No user has this id (`user_not_found`)."),
)
async def list_devices(user_id: UserIdPath, _user: CurrentUser, session: Session) -> list[DeviceOut]:
    if await accounts.get(session, user_id) is None:
        raise NotFound(f"There is no user with id {user_id}.", code=ApiErrorCode.USER_NOT_FOUND)
    return [device_out(d) for d in await device_store.list_active(session, user_id)]


@router.delete(
    "/me/devices/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke one of your devices (its queued messages are dropped, its socket closed)",
    responses=errors(e404="You have no active device with that id (`device_not_found`)."),
)
async def revoke(device_id: str, user: CurrentUser, request: Request, session: Session) -> Response:
    user_id = user.id
    try:
        await device_store.revoke(session, user_id, device_id)
    except StoreNotFound as exc:
        raise NotFound(
            f"You have no active device '{device_id}'.", code=ApiErrorCode.DEVICE_NOT_FOUND
        ) from exc
    await session.commit()
    await request.app.state.hub.disconnect_device(
        user_id, device_id, CloseCode.ACCOUNT_GONE, "device revoked"
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
