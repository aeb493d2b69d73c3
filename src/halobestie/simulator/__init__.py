"""Simulated traffic for `halobestie dev --demo`: mitras, customers and an admin using the
public HTTP API and WebSocket (a client, not a back door). See docs/subsystems/console.md."""

from .actors import Behaviour, ChatHook, DemoChat, NoChat, World
from .run import DemoConfig, Simulation

__all__ = [
    "Behaviour",
    "ChatHook",
    "DemoChat",
    "DemoConfig",
    "NoChat",
    "Simulation",
    "World",
]
