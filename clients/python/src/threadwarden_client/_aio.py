"""The asyncio client: one Moderate stream, verdicts matched to events, reconnect and retry."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Optional, Sequence, Tuple

import grpc

from . import _types as t
from ._generated import moderation_pb2 as pb2
from ._generated import moderation_pb2_grpc as pb2_grpc

log = logging.getLogger("threadwarden_client")

# A stream that fails with one of these is re-opened and its un-answered events are re-sent.
# Others (UNAUTHENTICATED, UNIMPLEMENTED, ...) fail the waiting calls; the next call tries again.
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
})

# Reconnect quickly: the sidecar is local and restarts fast.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

_CLOSE = object()


class _Pending:
    __slots__ = ("event", "future", "waiters")

    def __init__(self, event: pb2.ConversationEvent, future: asyncio.Future):
        self.event, self.future, self.waiters = event, future, 0


def _key(event: pb2.ConversationEvent) -> Tuple[str, str, str]:
    return (event.tenant_id, event.thread_id, event.event_id)


class Moderator:
    """Owns one bidirectional Moderate stream, multiplexing every thread of a chat server.

    ``await moderator.moderate(event)`` returns the verdict for that event. If the stream breaks
    (sidecar restart, network blip), the moderator re-opens it and re-sends every event still
    waiting, in order: event ids are idempotent on the sidecar, so nothing is counted twice.
    Each call has a deadline (``deadline`` seconds unless ``timeout`` is given) after which it
    raises ``DeadlineExceeded`` and the event is no longer retried.

    Use it as ``async with Moderator("127.0.0.1:50051") as moderator: ...``.
    """

    def __init__(self, target: Optional[str] = None, *, channel: Optional[grpc.aio.Channel] = None,
                 deadline: float = 5.0, metadata: Sequence[Tuple[str, str]] = (),
                 backoff: Tuple[float, float] = (0.05, 2.0)):
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        self._target, self._channel, self._owns_channel = target, channel, channel is None
        self.deadline, self._metadata, self._backoff = deadline, tuple(metadata), backoff
        self._pending: "collections.OrderedDict[Tuple[str, str, str], _Pending]" = collections.OrderedDict()
        self._outbox: Optional[asyncio.Queue] = None
        self._runner: Optional[asyncio.Task] = None
        self._closing = False
        self.reconnects = 0
        """How many times the stream was re-opened after it broke."""

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> "Moderator":
        if self._runner is None:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
            self._stub = pb2_grpc.ModerationServiceStub(self._channel)
            self._runner = asyncio.create_task(self._run(), name="threadwarden-moderate-stream")
        return self

    async def __aenter__(self) -> "Moderator":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Waits up to ``timeout`` for un-answered events, then closes the stream (and the
        channel, if the moderator created it). Calls still waiting raise ``Unavailable``."""
        if self._closing or self._runner is None:
            self._closing = True
            return
        waiting = [p.future for p in self._pending.values()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        self._closing = True
        if self._outbox is not None:
            self._outbox.put_nowait(_CLOSE)  # half-close: the sidecar ends the stream cleanly
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout=1.0)
        except asyncio.TimeoutError:
            self._runner.cancel()
        self._fail_all(t.Unavailable("CANCELLED", "the moderator was closed"))
        if self._owns_channel and self._channel is not None:
            await self._channel.close()

    # --- the stream -----------------------------------------------------------------------

    async def moderate(self, event: pb2.ConversationEvent, *, timeout: Optional[float] = None) -> t.Verdict:
        """The verdict for ``event``. Raises ``EventRejected`` (bad event: code and message),
        ``DeadlineExceeded`` (no verdict in time) or ``Unavailable`` (stream failed for good)."""
        t.as_event(event)
        if self._closing:
            raise t.Unavailable("CANCELLED", "the moderator is closed")
        await self.start()
        key = _key(event)
        entry = self._pending.get(key)
        if entry is None:  # a duplicate of an event still waiting shares its verdict
            entry = self._pending[key] = _Pending(event, asyncio.get_running_loop().create_future())
            if self._outbox is not None:
                self._outbox.put_nowait(entry)
        entry.waiters += 1
        timeout = self.deadline if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout)
        except asyncio.TimeoutError:
            raise t.DeadlineExceeded(
                f"no verdict for event {event.event_id!r} within {timeout:g}s") from None
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.future.done():
                # Nobody waits any more: stop retrying it. If it was already sent, the sidecar
                # decides it anyway; re-sending the same event_id later returns that verdict.
                entry.future.cancel()
                if self._pending.get(key) is entry:
                    del self._pending[key]

    async def _run(self) -> None:
        delay = self._backoff[0]
        while not self._closing:
            outbox: asyncio.Queue = asyncio.Queue()
            inflight: "collections.deque[_Pending]" = collections.deque()
            # Everything un-answered goes first, in the order it was submitted.
            for entry in self._pending.values():
                outbox.put_nowait(entry)
            self._outbox = outbox
            call = self._stub.Moderate(
                self._requests(outbox, inflight), metadata=self._metadata, wait_for_ready=True)
            try:
                async for response in call:
                    delay = self._backoff[0]
                    self._resolve(response, inflight)
                if self._closing:
                    return
                log.info("moderate stream ended by the sidecar; re-opening")
            except grpc.aio.AioRpcError as e:
                if self._closing:
                    return
                if e.code() in RETRYABLE:
                    log.info("moderate stream broke (%s); re-opening and re-sending %d un-answered events",
                             e.code().name, len(self._pending))
                else:
                    log.warning("moderate stream failed (%s); failing %d waiting calls",
                                e.code().name, len(self._pending))
                    self._fail_all(t.Unavailable(e.code().name, e.details() or ""))
            finally:
                self._outbox = None
                outbox.put_nowait(_CLOSE)  # ends this call's request generator
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
            self.reconnects += 1

    async def _requests(self, outbox: asyncio.Queue, inflight: collections.deque):
        while True:
            entry = await outbox.get()
            if entry is _CLOSE:
                return
            if entry.future.done():  # abandoned before it was sent
                continue
            inflight.append(entry)
            yield pb2.ModerateRequest(event=entry.event)

    def _resolve(self, response: pb2.ModerateResponse, inflight: collections.deque) -> None:
        # Responses come in request order, but match on the event id (and the verdict's thread)
        # anyway: the first in-flight event that fits is the one answered.
        result = response.WhichOneof("result")
        # Every response carries the thread id (errors too); older sidecars only on verdicts.
        thread_id = response.thread_id or (response.verdict.thread_id if result == "verdict" else None)
        for i, entry in enumerate(inflight):
            if entry.event.event_id == response.event_id and thread_id in (None, entry.event.thread_id):
                del inflight[i]
                break
        else:
            log.warning("a response matched no event in flight (event_id %r)", response.event_id)
            return
        key = _key(entry.event)
        if self._pending.get(key) is entry:
            del self._pending[key]
        if entry.future.done():
            return
        if result == "verdict":
            entry.future.set_result(t.Verdict(response.verdict))
        elif result == "error":
            entry.future.set_exception(t.EventRejected(response.error.code, response.error.message, response.event_id))
        else:
            entry.future.set_exception(t.EventRejected("UNKNOWN", "the sidecar sent an empty result", response.event_id))

    def _fail_all(self, error: Exception) -> None:
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending.clear()

    # --- unary calls on the same channel --------------------------------------------------

    async def evaluate(self, event: pb2.ConversationEvent, *, timeout: Optional[float] = None) -> t.Verdict:
        """One decision over the unary Evaluate RPC (no stream, no automatic retry)."""
        await self.start()
        try:
            response = await self._stub.Evaluate(pb2.EvaluateRequest(event=t.as_event(event)),
                                                 timeout=timeout or self.deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise t.rpc_error(e, event.event_id) from None
        return t.Verdict(response.verdict)

    async def get_thread(self, thread_id: str, *, tenant_id: str = "",
                         timeout: Optional[float] = None) -> Optional[pb2.ThreadSummary]:
        """The thread's summary, or None if the sidecar does not know the thread."""
        await self.start()
        try:
            response = await self._stub.GetThread(pb2.GetThreadRequest(tenant_id=tenant_id, thread_id=thread_id),
                                                  timeout=timeout or self.deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise t.rpc_error(e) from None
        return response.thread

    async def submit_feedback(self, thread_id: str, event_id: str, rating, *, comment: str = "",
                              tenant_id: str = "", timeout: Optional[float] = None) -> None:
        """Rates the verdict of ``event_id`` (``Rating.THUMBS_UP`` / ``THUMBS_DOWN``)."""
        await self.start()
        request = pb2.SubmitFeedbackRequest(tenant_id=tenant_id, thread_id=thread_id, event_id=event_id,
                                            rating=t.as_rating(rating), comment=comment)
        try:
            await self._stub.SubmitFeedback(request, timeout=timeout or self.deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise t.rpc_error(e, event_id) from None
