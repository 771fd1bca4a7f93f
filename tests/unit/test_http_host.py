"""The HTTP trigger port reads the port of the ``Host`` header: a malformed one
is the client's error (400), not the server's."""
from __future__ import annotations

from runtime.triggers.http import build_http_api


async def test_a_host_header_with_a_non_numeric_port_is_a_400(aiohttp_client):
    app, _ = build_http_api({}, service=None)
    client = await aiohttp_client(app)
    reply = await client.get("/anything", headers={"Host": "x:abc"})
    assert reply.status == 400
    assert (await reply.json()) == {"message": "Invalid Host header"}
    assert (await client.get("/anything", headers={"Host": "x:3000"})).status == 404
