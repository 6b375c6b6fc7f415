"""Typed views over the generated messages: enums, event builders, the verdict, errors."""

from __future__ import annotations

import enum
import uuid
from typing import Mapping, Optional, Union

from ._generated import moderation_pb2 as pb2

# --- enums (the proto's, without their prefixes; a test checks they match the proto) ---------


class Action(enum.IntEnum):
    CONTINUE = 1
    REDIRECT = 2
    END = 3


class Reason(enum.IntEnum):
    BENIGN = 1
    HARMFUL_REQUEST = 2
    ABUSE = 3
    CRISIS = 4
    PERSISTENT_HARM = 5
    PERSISTENT_ABUSE = 6
    USER_REQUESTED = 7
    MODEL_REQUESTED = 8
    ALREADY_ENDED = 9
    ASSISTANT_OUTPUT = 10


class Category(enum.IntEnum):
    CHILD_SEXUAL_EXPLOITATION = 1
    INDISCRIMINATE_WEAPONS = 2
    VIOLENT_EXTREMISM = 3
    VIOLENT_CRIME = 4
    CYBER_ATTACK = 5
    ABUSE = 6
    HATE = 7
    SEXUAL = 8
    SELF_HARM = 9
    HARM_TO_OTHERS = 10


class CrisisKind(enum.IntEnum):
    SELF_HARM = 1
    HARM_TO_OTHERS = 2
    THIRD_PARTY = 3


class UserOption(enum.IntEnum):
    NEW_CHAT = 1
    EDIT_AND_RETRY = 2
    FEEDBACK = 3


class Rating(enum.IntEnum):
    THUMBS_UP = 1
    THUMBS_DOWN = 2


# --- errors ---------------------------------------------------------------------------------


class ThreadwardenError(Exception):
    """Base of every error this client raises."""


class EventRejected(ThreadwardenError):
    """The sidecar could not decide this event (bad input, unknown parent thread, ...).

    ``code`` is the stable reason ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
    "ALREADY_EXISTS", "PERMISSION_DENIED"); ``message`` names the offending field. Retrying the
    same event gives the same answer: fix the event instead.
    """

    def __init__(self, code: str, message: str, event_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.event_id = code, message, event_id


class DeadlineExceeded(ThreadwardenError, TimeoutError):
    """No verdict arrived within the event's deadline (the sidecar is down or overloaded).

    The event is no longer retried by the client. Apply your fail-open/fail-closed policy; if you
    send the event again, reuse its event_id so that it is never counted twice.
    """


class Unavailable(ThreadwardenError):
    """The stream failed for a reason a retry will not fix (e.g. UNAUTHENTICATED), or the
    moderator was closed before the verdict arrived. ``code`` is the gRPC status name."""

    def __init__(self, code: str, details: str = ""):
        super().__init__(f"{code}: {details}" if details else code)
        self.code, self.details = code, details


# --- events ---------------------------------------------------------------------------------

CategoryLike = Union[Category, int, str]
Signals = Mapping[CategoryLike, float]


def _category(c: CategoryLike) -> int:
    if isinstance(c, str):
        return Category[c.upper().removeprefix("CATEGORY_")].value
    return int(c)


def _event(thread_id: str, event_id: Optional[str], tenant_id: str, model: str, locale: str,
           signals: Optional[Signals], signal_source: str, traceparent: str) -> pb2.ConversationEvent:
    event = pb2.ConversationEvent(
        event_id=event_id or uuid.uuid4().hex, thread_id=thread_id, tenant_id=tenant_id,
        model=model, locale=locale, traceparent=traceparent,
    )
    for category, score in (signals or {}).items():
        event.signals.add(category=_category(category), score=score, source=signal_source)
    return event


def user_message(thread_id: str, text: str, *, event_id: Optional[str] = None, tenant_id: str = "",
                 model: str = "", locale: str = "", signals: Optional[Signals] = None,
                 signal_source: str = "", traceparent: str = "") -> pb2.ConversationEvent:
    """A user's message. Pass your own message id as ``event_id`` so that a retry reuses it.

    ``signals`` are your own classifier's labels, e.g. ``{Category.SELF_HARM: 0.9}`` or
    ``{"self_harm": 0.9}``; the sidecar merges them with its own (maximum per category).
    """
    event = _event(thread_id, event_id, tenant_id, model, locale, signals, signal_source, traceparent)
    event.user_message.text = text
    return event


def assistant_message(thread_id: str, text: str, *, refused: bool = False,
                      end_conversation_requested: bool = False, event_id: Optional[str] = None,
                      tenant_id: str = "", model: str = "", locale: str = "",
                      signals: Optional[Signals] = None, signal_source: str = "",
                      traceparent: str = "") -> pb2.ConversationEvent:
    """The model's reply. ``end_conversation_requested``: the model called its end tool."""
    event = _event(thread_id, event_id, tenant_id, model, locale, signals, signal_source, traceparent)
    event.assistant_message.text = text
    event.assistant_message.refused = refused
    event.assistant_message.end_conversation_requested = end_conversation_requested
    return event


def fork(thread_id: str, parent_thread_id: str, after_turn: int, *, event_id: Optional[str] = None,
         tenant_id: str = "", model: str = "", locale: str = "", traceparent: str = "") -> pb2.ConversationEvent:
    """The user edited an earlier message: ``thread_id`` names the NEW branch, which starts from
    the parent's state as of ``after_turn`` (to edit user message N, pass N - 1)."""
    event = _event(thread_id, event_id, tenant_id, model, locale, None, "", traceparent)
    event.fork.parent_thread_id = parent_thread_id
    event.fork.after_turn = after_turn
    return event


def confirm_end(thread_id: str, *, event_id: Optional[str] = None, tenant_id: str = "", model: str = "",
                locale: str = "", traceparent: str = "") -> pb2.ConversationEvent:
    """The user pressed "yes, end this chat" after a verdict with end_confirmation_required."""
    event = _event(thread_id, event_id, tenant_id, model, locale, None, "", traceparent)
    event.confirm_end.SetInParent()
    return event


# --- the verdict ----------------------------------------------------------------------------


class Verdict:
    """A decision, with typed accessors. Every other field of the message is reachable as an
    attribute (``verdict.thread.turn``, ``verdict.policy_version``, ...) and the message itself
    as ``verdict.raw``."""

    __slots__ = ("raw",)

    def __init__(self, raw: pb2.Verdict):
        self.raw = raw

    def __getattr__(self, name):
        return getattr(self.raw, name)

    @property
    def action(self) -> Action:
        return Action(self.raw.action)

    @property
    def shadow_action(self) -> Action:
        return Action(self.raw.shadow_action)

    @property
    def reason(self) -> Reason:
        return Reason(self.raw.reason)

    @property
    def is_continue(self) -> bool:
        return self.raw.action == Action.CONTINUE

    @property
    def is_redirect(self) -> bool:
        """The model must refuse and steer away, following ``guidance``."""
        return self.raw.action == Action.REDIRECT

    @property
    def is_end(self) -> bool:
        """Lock the thread and show ``end_notice``."""
        return self.raw.action == Action.END

    # The helpers below follow ``action``, never the mere presence of a field: in shadow mode
    # (or where the policy is off) ``redirect`` and ``end`` describe what enforcement *would*
    # have done while ``action`` stays capped.

    @property
    def warning(self) -> bool:
        """The model must tell the user that continuing may end the conversation."""
        return self.is_redirect and self.raw.redirect.warning

    @property
    def warning_notice(self) -> Optional[str]:
        """With ``warning``: a short user-facing text a chat UI may show as a banner."""
        return (self.raw.redirect.user_notice or None) if self.warning else None

    @property
    def guidance(self) -> Optional[str]:
        """What the model must do instead of complying (REDIRECT), or how to ask the user to
        confirm an end (``end_confirmation_required``); None otherwise."""
        if self.is_redirect or self.raw.end_confirmation_required:
            return self.raw.redirect.guidance or None
        return None

    @property
    def end_notice(self) -> Optional[pb2.EndNotice]:
        """The notice to show when the thread ends (``message``, ``options``); None unless END."""
        return self.raw.end if self.is_end else None

    @property
    def end_options(self) -> tuple:
        """The options to offer after an END, as ``UserOption`` values."""
        return tuple(UserOption(o) for o in self.raw.end.options) if self.is_end else ()

    @property
    def crisis(self) -> Optional[pb2.CrisisSupport]:
        """Crisis support to show (``message``, ``resources``) and to pass the model (``guidance``)."""
        return self.raw.crisis if self.raw.HasField("crisis") else None

    @property
    def crisis_kind(self) -> Optional[CrisisKind]:
        return CrisisKind(self.raw.crisis.kind) if self.raw.HasField("crisis") else None

    def __repr__(self) -> str:  # ids and decisions only, never text
        flags = [f for f in ("warning", "end_confirmation_required", "end_denied", "replayed") if getattr(self, f)]
        if not self.raw.enforced:
            flags.append(f"shadow={self.shadow_action.name}")
        crisis = f" crisis={self.crisis_kind.name}" if self.crisis_kind else ""
        return (f"<Verdict thread={self.raw.thread_id!r} {self.action.name} {self.reason.name}{crisis}"
                f"{' ' + ','.join(flags) if flags else ''}>")


def as_event(event: pb2.ConversationEvent) -> pb2.ConversationEvent:
    if not isinstance(event, pb2.ConversationEvent):
        raise TypeError(f"expected a ConversationEvent, got {type(event).__name__}")
    return event


def as_rating(rating: Union[Rating, int, str]) -> int:
    if isinstance(rating, str):
        return Rating[rating.upper().removeprefix("RATING_")].value
    return int(rating)


__all__ = [
    "Action", "Reason", "Category", "CrisisKind", "UserOption", "Rating", "ThreadwardenError",
    "EventRejected", "DeadlineExceeded", "Unavailable", "user_message", "assistant_message", "fork",
    "confirm_end", "Verdict",
]


# Statuses that mean "this request is wrong", as opposed to "the sidecar is not reachable".
_REJECTED = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "PERMISSION_DENIED"}


def rpc_error(e, event_id: str = "") -> ThreadwardenError:
    """The typed error for a failed unary call (a grpc.RpcError)."""
    code, details = e.code().name, e.details() or ""
    if code in _REJECTED:
        return EventRejected(code, details, event_id)
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"no answer within the deadline{f' for event {event_id!r}' if event_id else ''}")
    return Unavailable(code, details)
