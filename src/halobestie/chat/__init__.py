"""Chat inside a session (SPEC §5): the two parties' messages, numbered per session
without gap, their read cursors, and the typing relay. See docs/subsystems/chat.md."""
