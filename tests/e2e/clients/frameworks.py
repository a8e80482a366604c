"""Drive one agent framework's MCP client through the broker, without a model: list the tools,
make an allowed and a denied call, and hold calls for a person to decide, the way an agent run
would call the framework's own tool wrapper. Prints one JSON object with what the framework
returned (or raised) at each step.

    python frameworks.py FRAMEWORK --url URL --direct-url URL --token T --cancel-when FILE

FRAMEWORK is openai-agents, pydantic-ai, fastmcp or langchain. Each held call gets a client of
its own, as separate agents would (openai-agents runs one call at a time per server connection,
so a held call would hold up the next): the `default` step's client has the framework's defaults
(it shows how long the framework waits for a held call), the `approve`, `reject` and `cancel`
steps' are configured with the recipe from docs/clients.md.
Every call is to server-everything's `echo`, whose message says what the broker's policy does
with it: "allowed", "deny ...", "hold ...".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

LONG = 900.0  # seconds: the recipe's wait for a held call, longer than any hold in the tests


class Adapter:
    """One framework's client: the tool wrapper an agent would call."""

    async def open(self, url: str, token: str, recipe: bool) -> None: ...
    async def tools(self) -> list[str]: ...
    async def call(self, name: str, args: dict) -> str: ...
    async def close(self) -> None: ...


class OpenAIAgents(Adapter):
    """openai-agents: MCPServerStreamableHttp, and the FunctionTool an Agent gets from it."""

    async def open(self, url, token, recipe):
        from agents.mcp import MCPServerStreamableHttp

        params: dict[str, Any] = {"url": url, "headers": {"Authorization": f"Bearer {token}"}}
        kw: dict[str, Any] = {}
        if recipe:
            # The default session timeout (5 s) ends the wait for a held call.
            params["sse_read_timeout"] = LONG
            kw["client_session_timeout_seconds"] = LONG
        self.server = MCPServerStreamableHttp(params=params, **kw)
        await self.server.connect()
        self.listed = await self.server.list_tools()

    async def tools(self):
        return [t.name for t in self.listed]

    async def call(self, name, args):
        from agents.mcp import MCPUtil
        from agents.tool_context import ToolContext

        tool = next(t for t in self.listed if t.name == name)
        ft = MCPUtil.to_function_tool(tool, self.server, convert_schemas_to_strict=False)
        raw = json.dumps(args)
        ctx = ToolContext(context=None, tool_name=name, tool_call_id="call-1", tool_arguments=raw)
        out = await ft.on_invoke_tool(ctx, raw)
        return out if isinstance(out, str) else json.dumps(out, default=str)

    async def close(self):
        await self.server.cleanup()


class PydanticAI(Adapter):
    """pydantic-ai: MCPToolset, whose tool errors reach the model as ModelRetry."""

    async def open(self, url, token, recipe):
        from pydantic_ai.mcp import MCPToolset

        kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
        if recipe:
            kw["read_timeout"] = LONG
        self.ts = MCPToolset(url, **kw)
        await self.ts.__aenter__()

    async def tools(self):
        return [t.name for t in await self.ts.list_tools()]

    async def call(self, name, args):
        out = await self.ts.direct_call_tool(name, args)
        return out if isinstance(out, str) else json.dumps(out, default=str)

    async def close(self):
        await self.ts.__aexit__(None, None, None)


class FastMCP(Adapter):
    """fastmcp: Client.call_tool, which raises ToolError on a tool error."""

    async def open(self, url, token, recipe):
        from fastmcp import Client

        kw: dict[str, Any] = {"auth": token}
        if recipe:
            kw["timeout"] = LONG
        self.client = Client(url, **kw)
        await self.client.__aenter__()

    async def tools(self):
        return [t.name for t in await self.client.list_tools()]

    async def call(self, name, args):
        r = await self.client.call_tool(name, args)
        return " ".join(getattr(c, "text", "") for c in r.content)

    async def close(self):
        await self.client.__aexit__(None, None, None)


class LangChain(Adapter):
    """langchain-mcp-adapters: MultiServerMCPClient's StructuredTools, as a LangGraph agent
    calls them."""

    async def open(self, url, token, recipe):
        from datetime import timedelta

        from langchain_mcp_adapters.client import MultiServerMCPClient

        conn: dict[str, Any] = {
            "url": url,
            "transport": "streamable_http",
            "headers": {"Authorization": f"Bearer {token}"},
        }
        if recipe:
            conn["sse_read_timeout"] = timedelta(seconds=LONG)
        self.client = MultiServerMCPClient({"tollgate": conn})
        self.listed = await self.client.get_tools()

    async def tools(self):
        return [t.name for t in self.listed]

    async def call(self, name, args):
        tool = next(t for t in self.listed if t.name == name)
        out = await tool.ainvoke(args)
        if isinstance(out, list):
            return " ".join(
                c.get("text", "") if isinstance(c, dict) else getattr(c, "text", str(c)) for c in out
            )
        return out if isinstance(out, str) else json.dumps(out, default=str)

    async def close(self):
        pass


ADAPTERS = {
    "openai-agents": OpenAIAgents,
    "pydantic-ai": PydanticAI,
    "fastmcp": FastMCP,
    "langchain": LangChain,
}


async def step(adapter: Adapter, name: str, args: dict) -> dict:
    """What one call gave the agent: the text, or the exception the framework raised."""
    t = time.monotonic()
    try:
        text = await adapter.call(name, args)
        return {"raised": None, "text": text, "seconds": round(time.monotonic() - t, 1)}
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # what the agent run would see
        return {
            "raised": type(e).__name__,
            "text": str(e),
            "seconds": round(time.monotonic() - t, 1),
        }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("framework", choices=sorted(ADAPTERS))
    p.add_argument("--url", required=True)
    p.add_argument("--direct-url", required=True, help="the same server without the broker")
    p.add_argument("--token", required=True)
    p.add_argument(
        "--cancel-when",
        required=True,
        help="a file: the held call of the cancel step is cancelled once it exists",
    )
    a = p.parse_args()
    fw = a.framework
    direct = ADAPTERS[fw]()
    await direct.open(a.direct_url, a.token, recipe=False)
    direct_tools = sorted(await direct.tools())
    await direct.close()
    default = ADAPTERS[fw]()
    await default.open(a.url, a.token, recipe=False)
    recipes = [ADAPTERS[fw]() for _ in range(3)]
    for r in recipes:
        await r.open(a.url, a.token, recipe=True)
    out: dict[str, Any] = {"tools": sorted(await default.tools()), "direct_tools": direct_tools}
    out["allowed"] = await step(default, "echo", {"message": f"allowed {fw}"})
    out["denied"] = await step(default, "echo", {"message": f"deny {fw}"})
    print(json.dumps({"ready": True}), flush=True)

    async def cancel() -> dict:
        task = asyncio.create_task(recipes[2].call("echo", {"message": f"hold cancel {fw}"}))
        while not os.path.exists(a.cancel_when):
            await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
            return {"cancelled": False}
        except asyncio.CancelledError:
            return {"cancelled": True}
        except BaseException as e:
            return {"cancelled": False, "raised": type(e).__name__, "text": str(e)}

    results = await asyncio.gather(
        step(default, "echo", {"message": f"hold default {fw}"}),
        step(recipes[0], "echo", {"message": f"hold approve {fw}"}),
        step(recipes[1], "echo", {"message": f"hold reject {fw}"}),
        cancel(),
    )
    out.update(zip(["default", "approve", "reject", "cancel"], results))
    for ad in [default, *recipes]:
        try:
            await ad.close()
        except BaseException:
            pass
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
