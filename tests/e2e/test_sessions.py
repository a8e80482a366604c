"""Sessions of the handshake revisions over a stdio upstream: resumption after a dropped stream,
DELETE, and a child that dies mid-session."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import anyio
import httpx2
from mcp import Client

from conftest import INIT, everything_stdio_command, open_config, post, toml_list
from test_passthrough import wait_for_text


def open_session(url: str) -> dict:
    r = post(url, INIT)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    h = {"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    assert post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h).status_code == 202
    return h


def sse_events(lines):
    event = {}
    for line in lines:
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif line.startswith("id:"):
            event["id"] = line[3:].strip()
        elif line.startswith("data:"):
            event["data"] = json.loads(line[5:].strip())


def test_a_dropped_stream_resumes_with_last_event_id_and_is_not_a_cancel(broker):
    b = broker(open_config({"e": f"command = {toml_list(everything_stdio_command())}"}))
    url = b.url("e")
    h = open_session(url)
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 4}, "_meta": {"progressToken": "p7"}},
    }
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json", **h}
    with httpx2.stream("POST", url, content=json.dumps(call), headers=headers, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(sse_events(r.iter_lines()))
    # The connection is gone after one progress event; the call keeps running upstream.
    assert first["data"]["method"] == "notifications/progress"
    time.sleep(2.5)
    with httpx2.stream("GET", url, headers={"accept": "text/event-stream", "last-event-id": first["id"], **h}, timeout=30) as r:
        assert r.status_code == 200
        rest = list(sse_events(r.iter_lines()))
    progress = [e["data"]["params"]["progress"] for e in rest if e["data"].get("method") == "notifications/progress"]
    assert progress == [2, 3, 4]
    final = rest[-1]["data"]
    assert final["id"] == 7 and "Long running operation completed" in json.dumps(final["result"])
    ids = [first["id"]] + [e["id"] for e in rest]
    assert len(set(ids)) == len(ids), "event ids are unique within the stream"


def test_delete_ends_the_session_and_its_child(broker):
    b = broker(open_config({"e": f"command = {toml_list(everything_stdio_command())}"}))
    url = b.url("e")
    h = open_session(url)
    r = httpx2.delete(url, headers=h)
    assert r.status_code == 200
    wait_for_text(b.log, "upstream process stopped")
    r = post(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, h)
    assert r.status_code == 404


def test_a_killed_child_is_restarted_and_the_session_carries_on(broker):
    b = broker(open_config({"e": f"command = {toml_list(everything_stdio_command())}"}))

    async def run():
        async with Client(b.url("e"), mode="legacy") as c:
            first = await c.call_tool("echo", {"message": "before"})
            pids = [int(p) for p in re.findall(r"upstream process started.*?pid=(\d+) restarts=0", b.log())]
            session_pid = pids[-1]
            os.kill(session_pid, signal.SIGKILL)
            wait_for_text(b.log, "restarts=1")
            second = None
            for _ in range(50):
                try:
                    second = await c.call_tool("echo", {"message": "after"})
                    break
                except Exception:
                    await anyio.sleep(0.2)
            return first, second

    first, second = anyio.run(run)
    assert first.content[0].text == "Echo: before"
    assert second is not None and second.content[0].text == "Echo: after"
    assert "the upstream process exited" in b.log()
    assert "upstream_stderr" in b.log() or "Starting default (STDIO) server" in b.log()
