"""A sample upstream for the Tollgate demo: an "ops" MCP server (official Python SDK) with safe
and risky tools. Nothing here touches anything real; every tool only says what it would do.

Usage: python examples/ops_server.py  (speaks MCP on stdio)
"""

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("tollgate-demo-ops")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def list_buckets() -> str:
    """List storage buckets."""
    return "prod-logs-2024, prod-logs-2025, staging-assets, backups"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def read_file(path: str) -> str:
    """Read a file from the shared volume."""
    return f"(contents of {path})"


@server.tool()
def execute_sql(database: str, query: str) -> str:
    """Run a SQL statement."""
    return f"ran on {database}: {query}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_bucket(bucket: str) -> str:
    """Delete a storage bucket and everything in it."""
    return f"deleted bucket {bucket}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def transfer_funds(to: str, amount: int, memo: str = "") -> str:
    """Send money from the company account."""
    return f"sent {amount} to {to} ({memo})"


if __name__ == "__main__":
    server.run("stdio")
