"""Commands straight on a pooled valkey-py connection, for the two paths where the
Pipeline's per-command bookkeeping measured too dear (the auto-pipelined heartbeat, the
streamed find-available)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from valkey.asyncio.connection import Connection
from valkey.exceptions import ConnectionError as ValkeyConnectionError

T = TypeVar("T")


async def on_connection(client: Any, op: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `op` on one of `client`'s pooled connections (raw `send_packed_command` /
    `read_response`). A dropped connection (Valkey closed an idle one, or
    restarted) is retried once on a fresh one, so `op` must be idempotent; any other
    failure, a timeout or a cancel included, leaves the stream out of step, so that
    connection is closed instead of returned as it is."""
    pool = client.connection_pool
    for attempt in (1, 2):
        conn = await pool.get_connection("_")
        try:
            return await op(conn)
        except ValkeyConnectionError:
            await conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")
