"""threadwarden-client: a Python client for the threadwarden moderation sidecar.

    from threadwarden_client import Moderator, user_message

    async with Moderator("127.0.0.1:50051") as moderator:
        verdict = await moderator.moderate(user_message("thread-1", text, event_id=message_id))
        if verdict.is_end: ...

``Moderator`` (asyncio) owns one Moderate stream for all threads; ``Client`` has blocking
Evaluate/GetThread/SubmitFeedback helpers. ``pb2`` and ``pb2_grpc`` are the raw generated
modules. See docs/integration.md in the repository for what each verdict asks of you.
"""

from ._aio import Moderator
from ._generated import moderation_pb2 as pb2
from ._generated import moderation_pb2_grpc as pb2_grpc
from ._sync import Client
from ._types import (
    Action,
    Category,
    CrisisKind,
    DeadlineExceeded,
    EventRejected,
    Rating,
    Reason,
    ThreadwardenError,
    Unavailable,
    UserOption,
    Verdict,
    assistant_message,
    confirm_end,
    fork,
    user_message,
)

__all__ = [
    "Moderator", "Client", "Verdict", "Action", "Reason", "Category", "CrisisKind", "UserOption", "Rating",
    "ThreadwardenError", "EventRejected", "DeadlineExceeded", "Unavailable", "user_message",
    "assistant_message", "fork", "confirm_end", "pb2", "pb2_grpc",
]
