"""Blocking helpers over the unary RPCs, for simple (threaded or synchronous) chat servers."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import grpc

from . import _types as t
from ._generated import moderation_pb2 as pb2
from ._generated import moderation_pb2_grpc as pb2_grpc


class Client:
    """Evaluate, GetThread and SubmitFeedback, one blocking call each.

    Evaluate gives the same decision as the Moderate stream. Errors are typed: ``EventRejected``
    (bad request: code and message), ``DeadlineExceeded``, ``Unavailable`` (sidecar unreachable:
    apply your fail-open/fail-closed choice). Thread-safe; use one per process.
    """

    def __init__(self, target: Optional[str] = None, *, channel: Optional[grpc.Channel] = None,
                 timeout: float = 5.0, metadata: Sequence[Tuple[str, str]] = ()):
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        self._owns_channel = channel is None
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = pb2_grpc.ModerationServiceStub(self._channel)
        self.timeout, self._metadata = timeout, tuple(metadata)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def evaluate(self, event: pb2.ConversationEvent, *, timeout: Optional[float] = None) -> t.Verdict:
        """The verdict for one event."""
        try:
            response = self._stub.Evaluate(pb2.EvaluateRequest(event=t.as_event(event)),
                                           timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise t.rpc_error(e, event.event_id) from None
        return t.Verdict(response.verdict)

    def get_thread(self, thread_id: str, *, tenant_id: str = "",
                   timeout: Optional[float] = None) -> Optional[pb2.ThreadSummary]:
        """The thread's summary (no message text), or None if the sidecar does not know it."""
        try:
            response = self._stub.GetThread(pb2.GetThreadRequest(tenant_id=tenant_id, thread_id=thread_id),
                                            timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise t.rpc_error(e) from None
        return response.thread

    def submit_feedback(self, thread_id: str, event_id: str, rating, *, comment: str = "",
                        tenant_id: str = "", timeout: Optional[float] = None) -> None:
        """Rates the verdict of ``event_id``: ``Rating.THUMBS_UP`` or ``Rating.THUMBS_DOWN``."""
        request = pb2.SubmitFeedbackRequest(tenant_id=tenant_id, thread_id=thread_id, event_id=event_id,
                                            rating=t.as_rating(rating), comment=comment)
        try:
            self._stub.SubmitFeedback(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise t.rpc_error(e, event_id) from None
