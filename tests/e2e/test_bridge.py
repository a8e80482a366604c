"""`tollgate-broker connect`: stdio-only clients reach a running broker."""

from __future__ import annotations

import anyio
from mcp import Client, StdioServerParameters

from conftest import BROKER_BIN, everything_stdio_command, py_stdio_command, toml_list
from test_policy import TOKEN, TOKEN_SHA


def bridged(url: str, token: str | None = TOKEN) -> StdioServerParameters:
    env = {"TOLLGATE_TOKEN": token} if token else {}
    return StdioServerParameters(command=str(BROKER_BIN), args=["connect", url], env=env)


def test_python_stdio_client_through_the_bridge(broker):
    b = broker(
        f"""
        [policy]
        default = "allow"
        [[client]]
        name = "desktop"
        token_sha256 = "{TOKEN_SHA}"
        [[server]]
        name = "everything"
        command = {toml_list(everything_stdio_command())}
        [[server]]
        name = "py"
        command = {toml_list(py_stdio_command())}
        [[rule]]
        tools = ["py/delete_bucket"]
        action = "deny"
        reason = "not from the desktop"
        """
    )

    async def run():
        async with Client(bridged(b.url("everything"))) as c:
            tools = await c.list_tools()
            echo = await c.call_tool("echo", {"message": "over the bridge"})
            seen = []

            async def on_progress(p, total, msg):
                seen.append(p)

            slow = await c.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress)
            legacy = (c.protocol_version, len(tools.tools), echo.content[0].text, seen, slow.is_error)
        async with Client(bridged(b.url("py"))) as c:
            denied = await c.call_tool("delete_bucket", {"bucket": "b"})
            ok = await c.call_tool("echo", {"message": "modern"})
            modern = (c.protocol_version, denied.is_error, denied.content[0].text, ok.content[0].text)
        return legacy, modern

    legacy, modern = anyio.run(run)
    assert legacy[0] == "2025-11-25"
    assert legacy[1] > 5 and legacy[2] == "Echo: over the bridge"
    assert legacy[3] == [1, 2, 3] and legacy[4] is not True
    assert modern[0] == "2026-07-28"
    assert modern[1] is True and "not from the desktop" in modern[2]
    assert modern[3] == "Echo: modern"


def test_bridge_with_a_bad_token_reports_the_refusal(broker):
    b = broker(
        f"""
        [[client]]
        name = "desktop"
        token_sha256 = "{TOKEN_SHA}"
        [[server]]
        name = "everything"
        command = {toml_list(everything_stdio_command())}
        """
    )

    async def run():
        async with Client(bridged(b.url("everything"), token="wrong"), mode="legacy"):
            pass

    try:
        anyio.run(run)
    except Exception as e:  # the SDK surfaces the JSON-RPC error from initialize
        assert "invalid bearer token" in repr(e) or "invalid bearer token" in str(getattr(e, "exceptions", "")), repr(e)
    else:
        raise AssertionError("initialize with a wrong token must fail")
