"""A scripted agent for Tollgate demos and tests: real MCP calls through the broker with the
official Python SDK (`mcp`).

    python examples/agent.py URL [--token T] [--loop N] [--script demo|test|files] [--json]
    python examples/agent.py URL --script files --root DIR --agent N

It makes safe calls, risky calls that policy holds for approval, near-duplicates worth diffing,
and a runaway loop of N identical calls, all at once on one MCP session (as a looping agent
would), and prints what each call got back. With --json it prints one JSON object at the end:
{"label": [result text, ...], ...}.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import httpx2 as httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def script(name: str, loop: int, root: str = "", agent: int = 1) -> list[tuple[str, str, dict]]:
    if name == "files":
        # Against the reference filesystem server on ROOT: a morning's mix of one agent, four
        # file reads and four directory listings, one write and one move, each on its own path.
        d = f"{root}/a{agent}"
        return (
            [("read", "read_file", {"path": f"{d}/f{i}.txt"}) for i in range(4)]
            + [("list", "list_directory", {"path": f"{d}/d{i}"}) for i in range(4)]
            + [("write", "write_file", {"path": f"{d}/new.txt", "content": "overwritten"})]
            + [("move", "move_file", {"source": f"{d}/f0.txt", "destination": f"{d}/moved.txt"})]
        )
    if name == "demo":
        # Against examples/ops_server.py under examples/demo.toml.
        return [
            ("safe", "list_buckets", {}),
            ("safe-sql", "execute_sql", {"database": "analytics", "query": "SELECT count(*) FROM orders"}),
            ("small-transfer", "transfer_funds", {"to": "acct-17", "amount": 250, "memo": "team lunch"}),
            ("secret", "execute_sql", {"database": "prod", "query": "UPDATE users SET password = 'hunter2'"}),
            ("drop", "execute_sql", {"database": "prod", "query": "DROP TABLE orders"}),
            ("bucket", "delete_bucket", {"bucket": "prod-logs-2024"}),
            ("bucket-near-duplicate", "delete_bucket", {"bucket": "prod-logs-2025"}),
            ("wire", "transfer_funds", {"to": "acct-991", "amount": 50000, "memo": "Q3 vendor payment"}),
            ("wire-near-duplicate", "transfer_funds", {"to": "acct-991", "amount": 500000, "memo": "Q3 vendor payment"}),
        ] + [("loop", "execute_sql", {"database": "prod", "query": "DELETE FROM sessions WHERE id = 7"})] * loop
    calls = [
        ("ship", "echo", {"message": "deploy v2.3.1 to production"}),
        ("prod", "echo", {"message": "drop table orders on production"}),
    ]
    calls += [("loop", "echo", {"message": "retry: delete session 7"})] * loop
    return calls


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--token")
    p.add_argument("--loop", type=int, default=20)
    p.add_argument("--script", choices=["demo", "test", "files"], default="test")
    p.add_argument("--root", default="", help="the filesystem server's directory (--script files)")
    p.add_argument("--agent", type=int, default=1, help="which agent's files (--script files)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    http = httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(30, read=900),
        limits=httpx.Limits(max_connections=a.loop + 50, max_keepalive_connections=50),
    )
    results: dict[str, list[str]] = {}

    async def one(c: Client, label: str, tool: str, args: dict) -> None:
        try:
            r = await c.call_tool(tool, args)
            text = " ".join(getattr(x, "text", "") for x in r.content)
        except Exception as e:  # the agent reports failures instead of dying
            text = f"error: {e}"
        results.setdefault(label, []).append(text)
        if not a.json:
            print(f"{label:>15}: {text[:110]}", flush=True)

    async with Client(streamable_http_client(a.url, http_client=http)) as c:
        async with anyio.create_task_group() as tg:
            for label, tool, args in script(a.script, a.loop, a.root, a.agent):
                tg.start_soon(one, c, label, tool, args)
    if a.json:
        json.dump(results, sys.stdout)
        print()


if __name__ == "__main__":
    anyio.run(main)
