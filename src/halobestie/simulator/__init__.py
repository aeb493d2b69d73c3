"""Simulated traffic for `halobestie dev --demo`: mitras, customers and an admin using the
public HTTP API and WebSocket (a client, not a back door). See docs/subsystems/console.md."""

from .run import DemoConfig, Simulation
from .world import Behaviour, ChatHook, DemoChat, NoChat, World

__all__ = [
    "Behaviour",
    "ChatHook",
    "DemoChat",
    "DemoConfig",
    "NoChat",
    "Simulation",
    "World",
]
