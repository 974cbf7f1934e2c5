"""The gateway: the only ingress of a0 (REST, SSE, WebSocket, the chat UI's files).

``main.py`` builds the FastAPI app; ``handlers.py`` holds what each request does (one
code path for REST and WebSocket); ``fanout.py`` carries outbound events to clients.
"""
