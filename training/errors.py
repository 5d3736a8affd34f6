"""The one exception type for errors a user can cause (bad path, unreadable image, malformed record, wrong option).

The CLI turns it into exit status 2 and one line on stderr; anything else is a bug and may raise.
"""

from __future__ import annotations


class MedVQAUserError(Exception):
    """An input problem the user can fix. The message names the input and the reason, on one line."""

    def __init__(self, subject: object, reason: str) -> None:
        self.subject = str(subject)
        self.reason = reason
        super().__init__(f"{self.subject}: {reason}")
