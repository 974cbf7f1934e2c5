"""What an MCP server's answer becomes. What a server says is untrusted: outputs are
size-limited text, images are passed on (size-limited, base64) for the chat UI to show,
never interpreted here.
"""

from __future__ import annotations

import json

import mcp.types as types

MAX_OUTPUT_CHARS = 16_384
# Images travel base64 in the tool.result event (Kafka records are at most 1 MiB).
MAX_IMAGE_BYTES = 256 * 1024
MAX_IMAGES_BASE64_CHARS = 600_000


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "… [truncated]"


def to_output(result: types.CallToolResult) -> tuple[str, list[dict[str, str]]]:
    """The text the model sees and the images the UI shows, of a call's result."""
    parts: list[str] = []
    images: list[dict[str, str]] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent):
            size = len(block.data) * 3 // 4
            shown = sum(len(image["data"]) for image in images)
            if size <= MAX_IMAGE_BYTES and shown + len(block.data) <= MAX_IMAGES_BASE64_CHARS:
                images.append({"mime_type": block.mime_type, "data": block.data})
                parts.append(f"[image {block.mime_type}, {size} bytes, shown to the user]")
            else:
                parts.append(f"[image {block.mime_type}, {size} bytes, too large to show]")
        elif isinstance(block, types.AudioContent):
            parts.append(f"[audio {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                mime = resource.mime_type or "application/octet-stream"
                parts.append(f"[resource {resource.uri}, {mime}, {len(resource.blob) * 3 // 4} bytes]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link {block.uri}" + (f": {block.name}]" if block.name else "]"))
    if result.structured_content is not None and not any(
        isinstance(b, types.TextContent) for b in result.content
    ):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return clip("\n".join(parts), MAX_OUTPUT_CHARS), images
