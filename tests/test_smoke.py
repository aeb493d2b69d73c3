from __future__ import annotations

from tests.conftest import Instance
from tests.factories import make_user


async def test_mitra_goes_online_and_the_beacon_sees_it(inst: Instance) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.get("/api/availability")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "offline"
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    await inst.ctx.mirror.client.delete(inst.ctx.keys.snapshot)
    r = await inst.client.get("/api/availability")
    assert r.json()["state"] == "available", r.json()
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 200, r.text
