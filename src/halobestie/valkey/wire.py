"""Commands straight on a pooled valkey-py connection, for the two paths where the
Pipeline's per-command bookkeeping measured too dear (the auto-pipelined heartbeat, the
streamed find-available)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from valkey.asyncio.connection import Connection
from valkey.exceptions import AskError
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from .cluster import MirrorCluster

T = TypeVar("T")


async def on_connection(client: Any, op: Callable[[Connection], Awaitable[T]], key: str) -> T:
    """Run `op` on one of `client`'s pooled connections (raw `send_packed_command` /
    `read_response`); with a cluster client (VALKEY_CLUSTER), on one of the node that
    serves `key`'s slot, where every key of the mirror lives (cluster.py). A dropped
    connection (Valkey closed an idle one, or restarted) is retried once on a fresh one,
    so `op` must be idempotent; any other failure, a timeout or a cancel included, leaves
    the stream out of step, so that connection is closed instead of returned as it is.
    These raw commands bypass the cluster client's own bookkeeping: after a redirection
    (MOVED, ASK: the slot moved) or a dropped node, it learns the slot map again."""
    cluster = client if isinstance(client, MirrorCluster) else None
    for attempt in (1, 2):
        conn, release = await _checkout(client, key)
        try:
            return await op(conn)
        except (ValkeyConnectionError, AskError) as exc:
            await conn.disconnect()
            if cluster is not None:
                await cluster.forget_topology()
            if attempt == 2 or isinstance(exc, AskError):
                raise
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await release()
    raise AssertionError("unreachable")


async def _checkout(client: Any, key: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """A connection and how to give it back."""
    if isinstance(client, MirrorCluster):
        await client.initialize()
        node = client.owner(key)
        conn = node.acquire_connection()

        async def back_to_node() -> None:
            node._free.append(conn)  # what valkey-py's ClusterNode.execute_command does

        return conn, back_to_node
    pool = client.connection_pool
    conn = await pool.get_connection("_")
    return conn, lambda: pool.release(conn)
