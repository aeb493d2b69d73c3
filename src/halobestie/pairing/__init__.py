"""The pairing blast: a customer's request offered to a few available mitras, fairly
chosen; the first to accept gets a chat session, exactly once. See
docs/subsystems/pairing.md."""
