"""Device key bundles: publish, list active ones, revoke."""

from __future__ import annotations

import base64

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from signalling.protocol import CloseCode, b64encode
from store.models import MailboxEntry, utcnow
from tests.server.conftest import Account, AppFactory, client_for, make_account


def bundle(device_id: str = "laptop-0001", *, seed: int = 1, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "device_id": device_id,
        "identity_key": b64encode(bytes([seed]) * 32),
        "encryption_key": b64encode(bytes([seed]) * 550),
        "created_at": 1_760_000_000,
        "signature": b64encode(bytes([seed]) * 64),
    }
    body.update(overrides)
    return body


async def test_publish_stores_the_bundle_as_given(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.post("/me/devices", json=bundle(), headers=alice.headers)
    assert response.status_code == 201
    assert response.json() == {
        "user_id": alice.id,
        "device_id": "laptop-0001",
        "identity_key": b64encode(b"\x01" * 32),
        "encryption_key": b64encode(b"\x01" * 550),
        "created_at": 1_760_000_000,
        "signature": b64encode(b"\x01" * 64),
        "revoked": False,
    }


async def test_publishing_the_same_bundle_again_is_200_and_a_different_one_is_409(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    assert (await client.post("/me/devices", json=bundle(), headers=alice.headers)).status_code == 201
    same = await client.post("/me/devices", json=bundle(), headers=alice.headers)
    assert same.status_code == 200
    other_keys = await client.post("/me/devices", json=bundle(seed=2), headers=alice.headers)
    assert other_keys.status_code == 409
    assert other_keys.json()["code"] == "device_taken"
    by_bob = await client.post("/me/devices", json=bundle(), headers=bob.headers)
    assert by_bob.status_code == 409
    assert "make a new device id" in by_bob.json()["detail"]


async def test_bundle_shape_errors_are_422_saying_what_is_wrong(
    client: httpx.AsyncClient, alice: Account
) -> None:
    cases = {
        "identity_key: must be 32 bytes (Ed25519): 43 characters of unpadded base64url, got 42": bundle(
            identity_key=b64encode(b"k" * 31)
        ),
        "signature: must be 64 bytes (Ed25519): 86 characters of unpadded base64url, got 87": bundle(
            signature=b64encode(b"s" * 65)
        ),
        "encryption_key: must be 1 to 1024 bytes of DER": bundle(encryption_key=b64encode(b"e" * 1025)),
        "created_at: Input should be greater than or equal to 0": bundle(created_at=-5),
        "created_at: Input should be less than or equal to 9223372036854775807": bundle(created_at=2**63),
        "encryption_key: must be unpadded base64url": bundle(encryption_key="A" * 601),  # 1 mod 4
        "identity_key: must be unpadded base64url": bundle(
            identity_key=base64.b64encode(b"\xfb" * 32).decode()[:43]  # the standard alphabet's '+'
        ),
        "device_id: must be 8 to 64 characters": bundle(device_id="short"),
        "signature: is required": {k: v for k, v in bundle().items() if k != "signature"},
    }
    for expected, body in cases.items():
        response = await client.post("/me/devices", json=body, headers=alice.headers)
        assert response.status_code == 422, expected
        assert response.json()["code"] == "invalid"
        assert expected in response.json()["detail"], response.json()
        assert response.json()["field"] == expected.split(":")[0], response.json()
    assert (await client.get(f"/users/{alice.id}/devices", headers=alice.headers)).json() == []


async def test_anyone_logged_in_can_list_a_users_active_devices(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await client.post("/me/devices", json=bundle("laptop-0001", seed=1), headers=alice.headers)
    await client.post("/me/devices", json=bundle("phone-00001", seed=2), headers=alice.headers)
    listed = await client.get(f"/users/{alice.id}/devices", headers=bob.headers)
    assert listed.status_code == 200
    assert [d["device_id"] for d in listed.json()] == ["laptop-0001", "phone-00001"]
    assert (await client.get(f"/users/{alice.id}/devices")).status_code == 401
    missing = await client.get("/users/9999/devices", headers=bob.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "user_not_found"


async def test_revoke_hides_the_device_drops_its_mailbox_and_closes_its_socket(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await client.post("/me/devices", json=bundle("laptop-0001", seed=1), headers=alice.headers)
    await client.post("/me/devices", json=bundle("phone-00001", seed=2), headers=alice.headers)
    async with app.state.sessions() as session:
        for device, mid in (("laptop-0001", "1" * 32), ("phone-00001", "2" * 32)):
            session.add(
                MailboxEntry(
                    recipient_user=alice.id,
                    recipient_device=device,
                    sender_user=bob.id,
                    sender_device="bob-device1",
                    message_id=mid,
                    envelope=b"ciphertext",
                    size=10,
                    expires_at=utcnow(),
                )
            )
        await session.commit()

    response = await client.delete("/me/devices/laptop-0001", headers=alice.headers)
    assert response.status_code == 204
    listed = (await client.get(f"/users/{alice.id}/devices", headers=bob.headers)).json()
    assert [d["device_id"] for d in listed] == ["phone-00001"]
    assert app.state.hub.devices == [(alice.id, "laptop-0001", CloseCode.ACCOUNT_GONE, "device revoked")]
    async with app.state.sessions() as session:
        left = (await session.execute(select(MailboxEntry.recipient_device))).scalars().all()
    assert left == ["phone-00001"]
    # a revoked id is never reused, not even by its owner
    reuse = await client.post("/me/devices", json=bundle("laptop-0001", seed=1), headers=alice.headers)
    assert reuse.status_code == 409


async def test_revoking_a_missing_revoked_or_foreign_device_is_404(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await client.post("/me/devices", json=bundle("laptop-0001"), headers=alice.headers)
    foreign = await client.delete("/me/devices/laptop-0001", headers=bob.headers)
    assert foreign.status_code == 404
    assert foreign.json() == {
        "detail": "You have no active device 'laptop-0001'.",
        "code": "device_not_found",
    }
    assert (await client.delete("/me/devices/laptop-0001", headers=alice.headers)).status_code == 204
    assert (await client.delete("/me/devices/laptop-0001", headers=alice.headers)).status_code == 404
    assert (await client.delete("/me/devices/never-existed", headers=alice.headers)).status_code == 404


async def test_the_number_of_active_devices_is_limited(app_factory: AppFactory) -> None:
    async with app_factory(max_devices_per_user=2) as app, client_for(app) as client:
        alice = await make_account(client, "alice")
        for i in range(2):
            body = bundle(f"device-000{i}", seed=i + 1)
            assert (await client.post("/me/devices", json=body, headers=alice.headers)).status_code == 201
        third = await client.post("/me/devices", json=bundle("device-0009", seed=9), headers=alice.headers)
        assert third.status_code == 409
        assert third.json()["code"] == "too_many_devices"
        assert (await client.delete("/me/devices/device-0000", headers=alice.headers)).status_code == 204
        again = await client.post("/me/devices", json=bundle("device-0009", seed=9), headers=alice.headers)
        assert again.status_code == 201
