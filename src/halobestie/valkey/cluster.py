"""Valkey Cluster mode (SPEC §8, `VALKEY_CLUSTER=true`): the client `client.connect` builds
for a cluster, and what the raw paths (`wire.py`) need to find the mirror's node.

Every key of the mirror carries `VALKEY_KEY_PREFIX`, which must then hold a hash tag
(`{hb}:`), so all of them hash to one slot: Lua scripts, multi-key commands and the
seed's swap touch one node, as on a single server. The client (valkey-py's
`ValkeyCluster`) learns the slot map from the node `VALKEY_URL` names and follows MOVED
and ASK redirections. What it lacks, added here:
- `publish` and `pubsub`: PUBLISH reaches every node's subscribers (classic pub/sub is
  broadcast over the cluster bus), so the event bus publishes on the mirror's node and
  subscribes, with a plain client, on the node `VALKEY_URL` names;
- the on-connect hook (the mirror's server-lifetime check) and the C packer, which
  `ValkeyCluster.from_url` does not take: set on the options its nodes are built from.

What it costs: one slot lives on one primary, so that primary holds the whole mirror and
takes all of its writes; the cluster adds no capacity to it (docs/subsystems/failures.md).
"""

from __future__ import annotations

from typing import Any, cast

import valkey.asyncio as valkey_async
from valkey.asyncio.cluster import ClusterNode, ValkeyCluster

# Multi-key commands the engine sends whose first argument is a key.
_FIRST_ARG_IS_KEY = frozenset({"MGET", "MSET", "DEL", "UNLINK", "EXISTS"})


class MirrorCluster(ValkeyCluster):
    """A `ValkeyCluster` with `publish` and `pubsub`, closing what they open."""

    _pubsub_options: dict[str, Any]
    _pubsub_url: str
    _plain: valkey_async.Valkey | None

    def owner(self, key: str) -> ClusterNode:
        """The primary that serves `key`'s slot, as this client last learned the map
        (call `initialize()` first). A pending MOVED is applied first."""
        return self.nodes_manager.get_node_from_slot(self.keyslot(key))

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of a multi-key command from its first key: every key of the mirror
        shares it. valkey-py hashes every key to check that they agree, in Python:
        measured 0.75 s of event loop for the seed's swap of 100k capacities (and 7 ms
        per 1,000-key MGET), a check the node makes anyway (CROSSSLOT)."""
        name = command.upper()
        if name in ("EVAL", "EVALSHA") and len(args) > 2 and int(args[1]) > 0:
            return self.keyslot(args[2])
        if name in _FIRST_ARG_IS_KEY and args:
            return self.keyslot(args[0])
        return await super()._determine_slot(command, *args)

    async def publish(self, channel: str, message: str) -> int:
        """PUBLISH on the node of `channel`'s slot (any node would do: it is broadcast)."""
        await self.initialize()
        reply = await self.execute_command(
            "PUBLISH", channel, message, target_nodes=self.owner(channel)
        )
        return int(reply)

    def pubsub(self, **kwargs: Any) -> Any:
        """A pub/sub of a plain client of the node VALKEY_URL names (closed with this
        client): SUBSCRIBE hears what any node publishes."""
        if self._plain is None:
            self._plain = valkey_async.Valkey.from_url(self._pubsub_url, **self._pubsub_options)
        return self._plain.pubsub(**kwargs)

    async def forget_topology(self) -> None:
        """After a redirection or a dropped node seen outside `execute_command` (the raw
        paths): the slot map is learned again before the next command."""
        await self._reset_for_reinitialize()

    async def aclose(self) -> None:
        plain, self._plain = self._plain, None
        if plain is not None:
            await plain.aclose()
        await super().aclose()


def cluster_client(
    url: str, options: dict[str, Any], connection_mixin: type | None = None
) -> MirrorCluster:
    """A cluster client discovering the cluster from `url`'s node, with `options` (what a
    plain client would get from `client.connect`: timeouts, retry, decoding, the
    on-connect hook) and `connection_mixin` mixed into its connection class. One retry
    after re-reading the slot map (what follows a failover), not valkey-py's three: the
    breaker makes only one request pay for an outage, and it should pay little."""
    plain_options = dict(options)
    cluster_options = dict(options)
    on_connect = cluster_options.pop("valkey_connect_func", None)
    # from_url builds `cls`; typed as the base class.
    client = cast(
        MirrorCluster,
        MirrorCluster.from_url(url, cluster_error_retry_attempts=1, **cluster_options),
    )
    client._pubsub_url = url
    client._pubsub_options = {k: v for k, v in plain_options.items() if k != "valkey_connect_func"}
    client._plain = None
    # The options every discovered node's connections are built from (the startup node's
    # own connection only asks for the slot map).
    kwargs = client.connection_kwargs
    if on_connect is not None:
        kwargs["valkey_connect_func"] = on_connect
    base = kwargs["connection_class"]
    if connection_mixin is not None and not issubclass(base, connection_mixin):
        kwargs["connection_class"] = type(f"CPacked{base.__name__}", (connection_mixin, base), {})
    return client
