"""Drive a stdio-to-HTTP bridge (mcp-remote, as Claude Desktop uses for remote servers, or
`tollgate-broker connect`) with the official Python SDK over stdio, the way a stdio-only client
does. Same steps and output as frameworks.py.

    python bridge.py NAME --token T --cancel-when FILE -- COMMAND ARGS...

The bridge is started with COMMAND ARGS (the token goes in its environment as TOLLGATE_TOKEN
and AUTH_HEADER, for the bridge's own way of sending it). Every call shares one stdio session,
as one desktop client's would.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import anyio
from mcp import Client, StdioServerParameters


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--token", required=True)
    p.add_argument(
        "--cancel-when",
        required=True,
        help="a file: the held call of the cancel step is cancelled once it exists",
    )
    p.add_argument("command", nargs="+")
    a = p.parse_args()
    env = dict(os.environ, TOLLGATE_TOKEN=a.token, AUTH_HEADER=f"Bearer {a.token}")
    params = StdioServerParameters(command=a.command[0], args=a.command[1:], env=env)
    name = a.name
    out: dict = {}
    async with Client(params) as c:
        out["tools"] = sorted(t.name for t in (await c.list_tools()).tools)

        async def step(message: str) -> dict:
            t = time.monotonic()
            try:
                r = await c.call_tool("echo", {"message": message})
                text = " ".join(getattr(x, "text", "") for x in r.content)
                return {
                    "raised": None,
                    "error": bool(r.is_error),
                    "text": text,
                    "seconds": round(time.monotonic() - t, 1),
                }
            except Exception as e:
                return {"raised": type(e).__name__, "text": str(e), "seconds": round(time.monotonic() - t, 1)}

        out["allowed"] = await step(f"allowed {name}")
        out["denied"] = await step(f"deny {name}")
        print(json.dumps({"ready": True}), flush=True)
        results: dict = {}

        async def run(key: str, message: str) -> None:
            results[key] = await step(message)

        async def cancel() -> None:
            with anyio.CancelScope() as scope:
                async def stop() -> None:
                    while not os.path.exists(a.cancel_when):
                        await anyio.sleep(0.2)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop)
                    await c.call_tool("echo", {"message": f"hold cancel {name}"})
            results["cancel"] = {"cancelled": scope.cancelled_caught}

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "default", f"hold default {name}")
            tg.start_soon(run, "approve", f"hold approve {name}")
            tg.start_soon(run, "reject", f"hold reject {name}")
            tg.start_soon(cancel)
        out.update(results)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    anyio.run(main)
