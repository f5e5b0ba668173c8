"""Prekeys on the server: publish and refill, stock, claim with one one-time key each (SQLite and
PostgreSQL), last resort when the stock is empty, rotation, who may claim."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest

from crypto.bundle import make_bundle
from crypto.prekeys import (
    PrekeyBundle,
    PrekeyKind,
    PrekeyPair,
    PublicPrekey,
    generate_prekey,
    verify_prekey_bundle,
)
from signalling.protocol import b64decode, b64encode
from tests.server.conftest import Account, AppFactory, client_for, make_account
from tests.server.test_migrations import pg_url  # noqa: F401  (fixture)
from tests.support.keys import fixed_device_keys

BOB_DEVICE = "bob-phone-00001"
NAMES = {
    PrekeyKind.SIGNED: "signed",
    PrekeyKind.ONE_TIME: "one_time",
    PrekeyKind.KEM_LAST_RESORT: "kem_last_resort",
    PrekeyKind.KEM_ONE_TIME: "kem_one_time",
}
KINDS = {v: k for k, v in NAMES.items()}
BOB_KEYS = fixed_device_keys(1)


def wire(p: PrekeyPair) -> dict[str, object]:
    return {
        "kind": NAMES[p.public.kind],
        "key_id": p.public.key_id,
        "public_key": b64encode(p.public.public_key),
        "created_at": p.public.created_at,
        "signature": b64encode(p.public.signature),
    }


def parse(d: dict) -> PublicPrekey:
    return PublicPrekey(
        KINDS[d["kind"]], d["key_id"], d["created_at"], b64decode(d["public_key"]), b64decode(d["signature"])
    )


def prekeys(kind: PrekeyKind, first_id: int, n: int = 1, created_at: int = 1_767_225_600) -> list[PrekeyPair]:
    return [generate_prekey(BOB_KEYS, BOB_DEVICE, kind, first_id + i, created_at) for i in range(n)]


async def publish_device(client: httpx.AsyncClient, account: Account) -> None:
    b = make_bundle(BOB_KEYS, account.id, BOB_DEVICE, created_at=1_767_225_600)
    body = {
        "device_id": BOB_DEVICE,
        "identity_key": b64encode(b.identity_key),
        "encryption_key": b64encode(b.encryption_key),
        "created_at": b.created_at,
        "signature": b64encode(b.signature),
    }
    assert (await client.post("/me/devices", json=body, headers=account.headers)).status_code == 201


async def befriend(client: httpx.AsyncClient, a: Account, b: Account) -> None:
    assert (
        await client.post("/me/contacts/", json={"username": b.username}, headers=a.headers)
    ).status_code == 201
    assert (await client.post(f"/me/contacts/{a.id}/accept", headers=b.headers)).status_code == 200


async def world(client: httpx.AsyncClient, one_time: int = 3) -> tuple[Account, Account]:
    alice, bob = await make_account(client, "alice"), await make_account(client, "bob")
    await publish_device(client, bob)
    await befriend(client, alice, bob)
    keys = [
        *prekeys(PrekeyKind.SIGNED, 1),
        *prekeys(PrekeyKind.KEM_LAST_RESORT, 2),
        *prekeys(PrekeyKind.ONE_TIME, 100, one_time),
        *prekeys(PrekeyKind.KEM_ONE_TIME, 200, one_time),
    ]
    r = await client.post(
        f"/me/devices/{BOB_DEVICE}/prekeys", json={"prekeys": [wire(k) for k in keys]}, headers=bob.headers
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "device_id": BOB_DEVICE, "one_time": one_time, "kem_one_time": one_time,
        "signed_prekey_id": 1, "kem_last_resort_id": 2,
        "held_ids": [1, 2, *range(100, 100 + one_time), *range(200, 200 + one_time)],
    }  # fmt: skip
    return alice, bob


async def claim(client: httpx.AsyncClient, who: Account, user: Account) -> httpx.Response:
    return await client.post(f"/users/{user.id}/prekey-bundles", json={}, headers=who.headers)


async def test_claimed_bundle_verifies_and_each_one_time_key_is_handed_out_once(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await world(client, one_time=2)
    seen: list[tuple[int | None, int]] = []
    for _ in range(3):
        r = await claim(client, alice, bob)
        assert r.status_code == 200, r.text
        (b,) = r.json()
        bundle = PrekeyBundle(
            bob.id, b["device_id"], b64decode(b["identity_key"]),
            parse(b["signed_prekey"]), parse(b["kem_prekey"]),
            None if b["one_time_prekey"] is None else parse(b["one_time_prekey"]),
        )  # fmt: skip
        verify_prekey_bundle(bundle, BOB_KEYS.identity_public_bytes())
        seen.append(
            (
                None if bundle.one_time_prekey is None else bundle.one_time_prekey.key_id,
                bundle.kem_prekey.key_id,
            )
        )
    assert seen == [(100, 200), (101, 201), (None, 2)]  # then the last-resort KEM key, no curve one-time key
    stock = (await client.get(f"/me/devices/{BOB_DEVICE}/prekeys", headers=bob.headers)).json()
    assert (stock["one_time"], stock["kem_one_time"]) == (0, 0)


async def test_refill_is_idempotent_and_a_reused_id_with_other_bytes_is_409(
    client: httpx.AsyncClient,
) -> None:
    _, bob = await world(client, one_time=1)
    more = prekeys(PrekeyKind.ONE_TIME, 100, 3)  # id 100 again (same bytes? no: fresh key) -> conflict
    r = await client.post(
        f"/me/devices/{BOB_DEVICE}/prekeys", json={"prekeys": [wire(k) for k in more]}, headers=bob.headers
    )
    assert r.status_code == 409 and r.json()["code"] == "prekey_id_taken"
    fresh = prekeys(PrekeyKind.ONE_TIME, 300, 2)
    for _ in range(2):
        r = await client.post(
            f"/me/devices/{BOB_DEVICE}/prekeys",
            json={"prekeys": [wire(k) for k in fresh]},
            headers=bob.headers,
        )
        assert r.status_code == 200 and r.json()["one_time"] == 3


async def test_new_signed_prekey_replaces_the_older_one(client: httpx.AsyncClient) -> None:
    alice, bob = await world(client)
    newer = prekeys(PrekeyKind.SIGNED, 7, created_at=1_767_225_600 + 7 * 86400)
    r = await client.post(
        f"/me/devices/{BOB_DEVICE}/prekeys", json={"prekeys": [wire(k) for k in newer]}, headers=bob.headers
    )
    assert r.json()["signed_prekey_id"] == 7
    (b,) = (await claim(client, alice, bob)).json()
    assert b["signed_prekey"]["key_id"] == 7


async def test_stock_is_bounded(app_factory: AppFactory) -> None:
    async with app_factory(max_one_time_prekeys=2) as app, client_for(app) as client:
        bob = await make_account(client, "bob")
        await publish_device(client, bob)
        keys = prekeys(PrekeyKind.ONE_TIME, 1, 3)
        r = await client.post(
            f"/me/devices/{BOB_DEVICE}/prekeys",
            json={"prekeys": [wire(k) for k in keys]},
            headers=bob.headers,
        )
        assert r.status_code == 409 and r.json()["code"] == "prekey_stock_full"
        assert "at most 2" in r.json()["detail"]


async def test_shape_errors_say_what_is_wrong(client: httpx.AsyncClient) -> None:
    bob = await make_account(client, "bob")
    await publish_device(client, bob)
    short = {**wire(prekeys(PrekeyKind.KEM_ONE_TIME, 1)[0]), "public_key": b64encode(b"k" * 32)}
    r = await client.post(f"/me/devices/{BOB_DEVICE}/prekeys", json={"prekeys": [short]}, headers=bob.headers)
    assert r.status_code == 422 and "kem_one_time public key is 1184 bytes, got 32" in r.json()["detail"]
    twice = [wire(prekeys(PrekeyKind.ONE_TIME, 1)[0])] * 2
    r = await client.post(f"/me/devices/{BOB_DEVICE}/prekeys", json={"prekeys": twice}, headers=bob.headers)
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    r = await client.post(
        "/me/devices/not-my-device-1/prekeys", json={"prekeys": twice[:1]}, headers=bob.headers
    )
    assert r.status_code == 404


async def test_only_yourself_and_accepted_contacts_may_claim(client: httpx.AsyncClient) -> None:
    alice, bob = await world(client)
    mallory = await make_account(client, "mallory")
    r = await claim(client, mallory, bob)
    assert r.status_code == 403 and r.json()["code"] == "not_a_contact"
    assert (await claim(client, bob, bob)).status_code == 200
    r = await client.post(
        f"/users/{bob.id}/prekey-bundles", json={"device_ids": ["nope-nope-1"]}, headers=alice.headers
    )
    assert r.status_code == 404 and r.json()["code"] == "device_not_found"


async def group_of(client: httpx.AsyncClient, admin: Account, members: list[Account]) -> str:
    """A group made by `admin` (the server keeps its record as opaque bytes)."""
    gid = secrets.token_hex(16)
    body = {"group_id": gid, "name": "crag", "members": [m.id for m in members], "record": b64encode(b"r0")}
    r = await client.post("/groups", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    return gid


async def test_a_group_co_member_may_claim_though_not_a_contact_until_removed_or_blocked(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await world(client)
    carol, mallory = await make_account(client, "carol"), await make_account(client, "mallory")
    await befriend(client, alice, carol)  # carol and bob are contacts of alice, not of each other
    r = await claim(client, carol, bob)
    assert r.status_code == 403 and r.json()["code"] == "not_a_contact"

    gid = await group_of(client, alice, [bob, carol])
    r = await claim(client, carol, bob)
    assert r.status_code == 200, r.text
    (bundle,) = r.json()
    assert bundle["one_time_prekey"]["key_id"] == 100 and bundle["kem_prekey"]["key_id"] == 200
    r = await claim(client, mallory, bob)  # in no group with bob
    assert r.status_code == 403 and r.json()["code"] == "not_a_contact"

    body = {"user_ids": [carol.id], "record": b64encode(b"r1"), "version": 1}
    r = await client.post(f"/groups/{gid}/members/remove", json=body, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert (await claim(client, carol, bob)).status_code == 403  # no longer a co-member

    await group_of(client, alice, [bob, carol])
    assert (await claim(client, carol, bob)).status_code == 200
    r = await client.post("/me/blocks", json={"user_id": carol.id}, headers=bob.headers)
    assert r.status_code == 201, r.text
    r = await claim(client, carol, bob)  # still in the group, but bob blocked her
    assert r.status_code == 403 and r.json()["code"] == "not_a_contact"


async def test_one_claimer_takes_at_most_its_quota_of_one_time_keys_contact_or_co_member(
    app_factory: AppFactory,
) -> None:
    async with app_factory(prekey_claims_per_device=2) as app, client_for(app) as client:
        alice, bob = await world(client, one_time=10)
        carol = await make_account(client, "carol")
        await befriend(client, alice, carol)
        await group_of(client, alice, [bob, carol])

        def taken(answers: list[httpx.Response]) -> list[tuple[int | None, int]]:
            out = []
            for a in answers:
                assert a.status_code == 200, a.text
                (b,) = a.json()
                out.append(
                    (b["one_time_prekey"] and b["one_time_prekey"]["key_id"], b["kem_prekey"]["key_id"])
                )
            return out

        # the contact and the co-member each get 2 one-time keys, then signed + last resort only
        by_alice = taken([await claim(client, alice, bob) for _ in range(4)])
        by_carol = taken(list(await asyncio.gather(*(claim(client, carol, bob) for _ in range(4)))))
        for got in (by_alice, by_carol):
            assert got.count((None, 2)) == 2  # past the quota: no one-time key of either kind
            assert sum(1 for one_time, _ in got if one_time is not None) == 2
        assert by_alice[:2] == [(100, 200), (101, 201)]
        stock = (await client.get(f"/me/devices/{BOB_DEVICE}/prekeys", headers=bob.headers)).json()
        assert (stock["one_time"], stock["kem_one_time"]) == (6, 6)  # 10 - 2 - 2: the drain stopped
        assert len(taken([await claim(client, bob, bob) for _ in range(3)])) == 3  # own devices: no quota
        stock = (await client.get(f"/me/devices/{BOB_DEVICE}/prekeys", headers=bob.headers)).json()
        assert stock["one_time"] == 3


async def _concurrent_claims_hand_out_each_key_once(client: httpx.AsyncClient) -> None:
    alice, bob = await world(client, one_time=5)
    answers = await asyncio.gather(*(claim(client, alice, bob) for _ in range(12)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    got = [a.json()[0]["one_time_prekey"] for a in answers]
    ids = [g["key_id"] for g in got if g is not None]
    assert sorted(ids) == [100, 101, 102, 103, 104]  # each once, none lost
    kem_ids = [a.json()[0]["kem_prekey"]["key_id"] for a in answers]
    assert sorted(k for k in kem_ids if k != 2) == [200, 201, 202, 203, 204]


async def test_concurrent_claims_hand_out_each_key_once_on_sqlite(client: httpx.AsyncClient) -> None:
    await _concurrent_claims_hand_out_each_key_once(client)


@pytest.mark.postgres
async def test_concurrent_claims_hand_out_each_key_once_on_postgresql(
    pg_url: str,  # noqa: F811  (the fixture imported above)
    app_factory: AppFactory,
) -> None:
    async with app_factory(database_url=pg_url) as app, client_for(app) as client:
        await _concurrent_claims_hand_out_each_key_once(client)


async def test_a_revoked_device_has_no_bundle_to_claim(client: httpx.AsyncClient) -> None:
    alice, bob = await world(client)
    assert (await client.delete(f"/me/devices/{BOB_DEVICE}", headers=bob.headers)).status_code == 204
    assert (await claim(client, alice, bob)).json() == []


async def test_replace_drops_everything_the_server_held_for_the_device(client: httpx.AsyncClient) -> None:
    alice, bob = await world(client, one_time=3)
    fresh = [
        *prekeys(PrekeyKind.SIGNED, 1),
        *prekeys(PrekeyKind.KEM_LAST_RESORT, 2),
        *prekeys(PrekeyKind.ONE_TIME, 5),
    ]
    r = await client.post(
        f"/me/devices/{BOB_DEVICE}/prekeys",
        json={"prekeys": [wire(k) for k in fresh], "replace": True},
        headers=bob.headers,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["one_time"], r.json()["kem_one_time"]) == (1, 0)
    (b,) = (await claim(client, alice, bob)).json()
    assert b["one_time_prekey"]["key_id"] == 5 and b["kem_prekey"]["key_id"] == 2
