"""A streamed chat completion without I/O: server-sent events in, text and tool calls out.

:class:`SSEDecoder` turns the bytes of an ``text/event-stream`` body into the ``data`` of
each event; :class:`Turn` reads those ``chat.completion.chunk`` objects and gathers the
text, the tool calls (whose name and arguments arrive in pieces, by ``index``), the
finish reason, the model and the usage. Anything malformed raises :class:`StreamError`.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs

__all__ = ["MAX_EVENT_BYTES", "SSEDecoder", "StreamError", "ToolCall", "Turn"]

JSON = Any
#: Longest event (or line) the decoder buffers; a chunk is a few hundred bytes.
MAX_EVENT_BYTES: Final = 1 << 20
DONE: Final = "[DONE]"


class StreamError(ValueError):
    """The model server's stream is malformed; the message says how (nothing secret)."""


@attrs.define
class SSEDecoder:
    """Splits an event stream into events; keeps only their ``data`` (joined by newlines)."""

    max_event_bytes: int = MAX_EVENT_BYTES
    _partial: bytes = b""
    _data: list[str] = attrs.Factory(list)
    _size: int = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The ``data`` of every event that ``chunk`` completes."""
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > self.max_event_bytes:
            raise StreamError("an event of the stream is too large")
        events: list[str] = []
        for raw in lines:
            self._line(raw.removesuffix(b"\r"), events)
        return events

    def end(self) -> list[str]:
        """At the end of the body: the last event, if it lacked its blank line."""
        events: list[str] = []
        if self._partial:
            self._line(self._partial.removesuffix(b"\r"), events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        if not raw:  # a blank line ends the event
            if self._data:
                events.append("\n".join(self._data))
            self._data, self._size = [], 0
            return
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            raise StreamError("the stream is not UTF-8") from None
        name, _, value = line.partition(":")
        if name == "data":  # other fields (event, id, retry) and comments are not used
            self._size += len(raw)
            if self._size > self.max_event_bytes:
                raise StreamError("an event of the stream is too large")
            self._data.append(value.removeprefix(" "))


@attrs.frozen
class ToolCall:
    """One tool call the model made, assembled."""

    id: str
    name: str
    arguments: str


@attrs.define
class _Draft:
    id: str
    name: str = ""
    arguments: list[str] = attrs.Factory(list)


def _field(obj: dict[str, JSON], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise StreamError(f"malformed chunk: {what} is not a {kind.__name__}")
    return value


@attrs.define
class Turn:
    """One streamed response: feed it each event's data with :meth:`feed`."""

    text: list[str] = attrs.Factory(list)
    model: str | None = None
    usage: JSON = None
    finish_reason: str | None = None
    done: bool = False
    _drafts: dict[int, _Draft] = attrs.Factory(dict)

    @property
    def finished(self) -> bool:
        """The answer is whole: ``[DONE]`` arrived, or a finish reason."""
        return self.done or self.finish_reason is not None

    def tool_calls(self) -> list[ToolCall]:
        """The calls the model made in this response, in order."""
        return [
            ToolCall(id=d.id, name=d.name, arguments="".join(d.arguments))
            for _, d in sorted(self._drafts.items())
        ]

    def feed(self, data: str) -> str:
        """Read one event's data; return the text it adds ("" if none)."""
        if self.done:  # nothing may follow [DONE]; ignore what does
            return ""
        if data.strip() == DONE:
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise StreamError("malformed chunk: not JSON") from None
        if not isinstance(chunk, dict):
            raise StreamError("malformed chunk: not a JSON object")
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise StreamError(f"the model server sent an error: {str(message)[:200]}")
        self.model = _field(chunk, "model", str, "model") or self.model
        usage = _field(chunk, "usage", dict, "usage")
        if usage is not None:
            self.usage = usage
        added: list[str] = []
        for choice in _field(chunk, "choices", list, "choices") or ():
            if not isinstance(choice, dict):
                raise StreamError("malformed chunk: a choice is not an object")
            if choice.get("index", 0) != 0:  # we ask for one choice (n=1)
                continue
            delta = _field(choice, "delta", dict, "delta") or {}
            content = _field(delta, "content", str, "content")
            if content:
                added.append(content)
            for call in _field(delta, "tool_calls", list, "tool_calls") or ():
                self._tool_call_piece(call)
            self.finish_reason = (
                _field(choice, "finish_reason", str, "finish_reason") or self.finish_reason
            )
        text = "".join(added)
        if text:
            self.text.append(text)
        return text

    def _tool_call_piece(self, piece: JSON) -> None:
        if not isinstance(piece, dict):
            raise StreamError("malformed chunk: a tool call is not an object")
        index = _field(piece, "index", int, "tool_calls.index")
        call_id = _field(piece, "id", str, "tool_calls.id")
        function = _field(piece, "function", dict, "tool_calls.function") or {}
        if index is None:  # some servers send each call whole, without an index
            known = [i for i, d in self._drafts.items() if call_id and d.id == call_id]
            index = known[0] if known else len(self._drafts)
        draft = self._drafts.get(index)
        if draft is None:
            draft = self._drafts[index] = _Draft(id=call_id or f"call_{index}")
        elif call_id and draft.id != call_id and draft.id == f"call_{index}":
            draft.id = call_id
        draft.name += _field(function, "name", str, "function.name") or ""
        arguments = _field(function, "arguments", str, "function.arguments")
        if arguments:
            draft.arguments.append(arguments)
