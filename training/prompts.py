"""The one user turn the model is trained and asked with: the image, then the question.

The chat template that renders it is stored with the model (``chat_template.jinja``); this is only the message
structure, shared by training (``sft_data``), evaluation and ``medvqa ask`` so that they cannot drift apart.
"""

from __future__ import annotations

from typing import Any


def user_messages(question: str) -> list[dict[str, Any]]:
    """Chat messages for one question about one image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
