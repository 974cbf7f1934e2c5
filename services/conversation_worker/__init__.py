"""The conversation worker: runs turns — LLM calls, tool round-trips — and streams
every event to ``conversation.outbound``."""
