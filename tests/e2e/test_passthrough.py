"""The broker is transparent: real SDK clients see through it exactly what they see directly,
on every protocol revision they can speak, over stdio and Streamable HTTP upstreams."""

from __future__ import annotations

import anyio
import mcp.types as types
import pytest
from mcp import Client, StdioServerParameters

from conftest import everything_stdio_command, open_config, py_stdio_command, run_ts, toml_list

UPSTREAMS = ["everything-stdio", "everything-http", "py-stdio", "py-http"]


@pytest.fixture
def upstream(request, everything_http_factory, py_http_factory):
    """(direct target for the Python SDK, direct target for the TS client, [[server]] TOML)."""
    kind = request.param
    if kind == "everything-stdio":
        argv = everything_stdio_command()
        return StdioServerParameters(command=argv[0], args=argv[1:]), {"command": argv}, f"command = {toml_list(argv)}"
    if kind == "py-stdio":
        argv = py_stdio_command()
        return StdioServerParameters(command=argv[0], args=argv[1:]), {"command": argv}, f"command = {toml_list(argv)}"
    url = everything_http_factory() if kind == "everything-http" else py_http_factory()[0]
    return url, {"url": url}, f'url = "{url}"'


@pytest.fixture
def everything_http_factory(request):
    return lambda: request.getfixturevalue("everything_http")


@pytest.fixture
def py_http_factory(request):
    return lambda: request.getfixturevalue("py_http")


def start_open_broker(broker, server_line: str):
    return broker(open_config({"up": server_line}))


async def observe(target, mode: str) -> dict:
    async with Client(target, mode=mode) as c:
        tools = await c.list_tools()
        echo = await c.call_tool("echo", {"message": "hello through tollgate"})
        return {
            "version": c.protocol_version,
            "tools": sorted(
                (t.name, repr(t.input_schema), repr(t.annotations)) for t in tools.tools
            ),
            "echo": echo.model_dump(mode="json", exclude_none=True),
        }


@pytest.mark.parametrize("upstream", UPSTREAMS, indirect=True)
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_python_sdk_sees_the_same_tools_and_echo_as_direct(broker, upstream, mode):
    direct_target, _, server_line = upstream
    b = start_open_broker(broker, server_line)
    direct = anyio.run(observe, direct_target, mode)
    through = anyio.run(observe, b.url("up"), mode)
    assert through["version"] == direct["version"]
    assert through["tools"] == direct["tools"]
    assert through["echo"] == direct["echo"]
    assert "hello through tollgate" in str(through["echo"])


def test_python_sdk_negotiates_the_stateless_revision_when_the_upstream_speaks_it(broker):
    b = start_open_broker(broker, f"command = {toml_list(py_stdio_command())}")
    seen = anyio.run(observe, b.url("up"), "auto")
    assert seen["version"] == "2026-07-28"
    legacy = anyio.run(observe, b.url("up"), "legacy")
    assert legacy["version"] == "2025-11-25"


@pytest.mark.parametrize("upstream", UPSTREAMS, indirect=True)
def test_typescript_sdk_sees_the_same_tools_and_echo_as_direct(broker, upstream):
    _, ts_target, server_line = upstream
    b = start_open_broker(broker, server_line)
    direct = run_ts({"target": ts_target, "run": "list_and_echo"})
    through = run_ts({"target": {"url": b.url("up")}, "run": "list_and_echo"})
    assert through["tools"] == direct["tools"]
    assert through["echo"] == direct["echo"]
    assert through["echo"]["content"][0]["text"] == "Echo: hello"


@pytest.mark.parametrize("upstream", ["everything-stdio", "everything-http"], indirect=True)
def test_every_progress_notification_reaches_python_and_typescript_clients(broker, upstream):
    _, _, server_line = upstream
    b = start_open_broker(broker, server_line)

    async def run():
        seen = []

        async def on_progress(progress, total, message):
            seen.append(progress)

        async with Client(b.url("up")) as c:
            r = await c.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 5}, progress_callback=on_progress)
            return r, seen

    result, seen = anyio.run(run)
    assert not result.is_error
    assert seen == [1, 2, 3, 4, 5]
    ts = run_ts(
        {
            "target": {"url": b.url("up")},
            "run": "progress",
            "tool": "trigger-long-running-operation",
            "arguments": {"duration": 1, "steps": 5},
        }
    )
    assert ts["progress"] == [1, 2, 3, 4, 5]


def test_progress_on_the_stateless_revision_keeps_the_clients_token(broker):
    b = start_open_broker(broker, f"command = {toml_list(py_stdio_command())}")

    async def run():
        seen = []

        async def on_progress(progress, total, message):
            seen.append((progress, message))

        async with Client(b.url("up")) as c:
            assert c.protocol_version == "2026-07-28"
            # Two concurrent calls: their progress must not cross, though both share one child.
            async with anyio.create_task_group() as tg:
                other = []

                async def second():
                    async def p2(progress, total, message):
                        other.append(progress)

                    await c.call_tool("slow", {"steps": 3}, progress_callback=p2)

                tg.start_soon(second)
                r = await c.call_tool("slow", {"steps": 4}, progress_callback=on_progress)
            return r, seen, other

    r, seen, other = anyio.run(run)
    assert r.content[0].text == "done after 4 steps"
    assert [p for p, _ in seen] == [1, 2, 3, 4]
    assert other == [1, 2, 3]


def test_typescript_cancel_reaches_a_stdio_upstream(broker):
    b = start_open_broker(broker, f"command = {toml_list(py_stdio_command())}")
    out = run_ts(
        {"target": {"url": b.url("up")}, "run": "cancel", "tool": "sleep", "arguments": {"seconds": 30}, "cancelAfterMs": 800}
    )
    assert out["cancelled"] is True
    wait_for_text(b.log, "upstream saw cancel of sleep(30")


def test_python_stateless_cancel_by_closing_the_stream_reaches_upstreams(broker, py_http):
    url, py_proc = py_http
    b = broker(open_config({"stdio": f"command = {toml_list(py_stdio_command())}", "remote": f'url = "{url}"'}))

    async def run(server):
        async with Client(b.url(server)) as c:
            assert c.protocol_version == "2026-07-28"
            with anyio.move_on_after(1.0):
                await c.call_tool("sleep", {"seconds": 31})
                raise AssertionError("the call should have been cancelled")

    anyio.run(run, "stdio")
    wait_for_text(b.log, "upstream saw cancel of sleep(31")
    anyio.run(run, "remote")
    wait_for_text(py_proc.stderr, "upstream saw cancel of sleep(31")


@pytest.mark.parametrize("upstream", ["everything-stdio", "everything-http"], indirect=True)
def test_sampling_and_elicitation_requests_reach_the_client_and_answers_return(broker, upstream):
    _, _, server_line = upstream
    b = start_open_broker(broker, server_line)

    async def sampling(context, params: types.CreateMessageRequestParams):
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"sampled<{prompt}>"), model="test-model"
        )

    async def elicitation(context, params):
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async def run():
        async with Client(b.url("up"), sampling_callback=sampling, elicitation_callback=elicitation) as c:
            s = await c.call_tool("trigger-sampling-request", {"prompt": "ping"})
            e = await c.call_tool("trigger-elicitation-request", {})
            return s, e

    s, e = anyio.run(run)
    assert "sampled<" in s.content[0].text and "ping" in s.content[0].text
    assert "Ada Lovelace" in str(e.model_dump())


def wait_for_text(read, needle: str, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in read():
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not seen within {timeout}s; last output:\n{read()[-3000:]}")
