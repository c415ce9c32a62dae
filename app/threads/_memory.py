"""A thread-log backend in memory (placeholder; replaced by the full backend)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from ._backend import Entry, Retention, ThreadHead, ThreadSummary

__all__ = ["MemoryBackend"]


class MemoryBackend:
    def __init__(self, retention: Retention | None = None) -> None:
        self._retention = retention or Retention()
        self._logs: dict[tuple[str, str], list[Entry]] = {}
        self._epoch = secrets.token_urlsafe(12)

    @property
    def epoch(self) -> str:
        return self._epoch

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        log = self._logs.get((user_id, thread_id), [])
        last = log[-1].thread_seq if log else 0
        first = log[0].thread_seq if log else last + 1
        ids = {e.client_id: e.run_id for e in log if e.client_id and e.run_id}
        return ThreadHead(last, first, ids)

    @property
    def ttl_s(self) -> float:
        return self._retention.ttl_s

    def append_now(self, entry: Entry) -> None:
        self._logs.setdefault((entry.user_id, entry.thread_id), []).append(entry)

    async def append(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            self.append_now(e)

    async def page(
        self, user_id: str, thread_id: str, before: int | None, limit: int
    ) -> tuple[list[Entry], bool]:
        log = self._logs.get((user_id, thread_id), [])
        older = [e for e in log if before is None or e.thread_seq < before]
        return older[-limit:], len(older) > limit

    async def after(self, user_id: str, thread_id: str, after: int, limit: int) -> list[Entry]:
        log = self._logs.get((user_id, thread_id), [])
        return [e for e in log if e.thread_seq > after][:limit]

    async def threads(self, user_id: str, limit: int) -> list[ThreadSummary]:
        out = [
            ThreadSummary(t, log[-1].thread_seq, log[-1].at)
            for (u, t), log in self._logs.items()
            if u == user_id and log
        ]
        out.sort(key=lambda s: s.updated_at, reverse=True)
        return out[:limit]

    async def prune(self, now: float) -> int:
        return 0

    async def aclose(self) -> None:
        return None
