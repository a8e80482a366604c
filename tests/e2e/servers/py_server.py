"""A small MCP server built on the official Python SDK (mcp 2.3), used as an upstream in the
end-to-end tests because it speaks the stateless 2026-07-28 revision as well as the handshake.

Usage: py_server.py stdio | py_server.py http PORT
"""

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations

server = MCPServer("tollgate-test-upstream")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo(message: str) -> str:
    """Echo the message back."""
    return f"Echo: {message}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_bucket(bucket: str) -> str:
    """Pretend to delete a bucket."""
    return f"deleted {bucket}"


@server.tool()
async def slow(steps: int, ctx: Context) -> str:
    """Report progress `steps` times, 50 ms apart, then answer."""
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
        await anyio.sleep(0.05)
    return f"done after {steps} steps"


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, so tests can cancel or time out a call."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        # Written to stderr, which the broker captures into its log: tests look for it to
        # prove that a client's cancel reached this upstream.
        print(f"upstream saw cancel of sleep({seconds})", file=sys.stderr, flush=True)
        raise
    return "woke up"


@server.tool()
async def mark(key: str, hold: bool = False) -> str:
    """Pause briefly, then append `key` to $TOLLGATE_MARK_FILE: one line per time the call
    ran, so the kill -9 harness can tell which calls ran, and how often (`hold` is for the
    broker's policy)."""
    await anyio.sleep(0.2)
    path = os.environ.get("TOLLGATE_MARK_FILE")
    if path:
        with open(path, "a") as f:
            f.write(key + "\n")
    return f"marked {key}"


@server.tool()
async def traced(ctx: Context) -> str:
    """The W3C traceparent this request carried in `params._meta`, or "none"."""
    meta = ctx.request_context.meta
    found = None
    if isinstance(meta, dict):
        found = meta.get("traceparent")
    elif meta is not None:
        found = getattr(meta, "traceparent", None) or (getattr(meta, "model_extra", None) or {}).get("traceparent")
    return found or "none"


@server.tool()
def strict(token: str, note: str = "") -> str:
    """Refuse every call with a JSON-RPC error that echoes its arguments, as some servers'
    input validation does (the broker must not store what it echoes)."""
    raise MCPError(-32602, f"Input validation error: token {token!r} with note {note!r} is not accepted")


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
