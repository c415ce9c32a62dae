"""The mutants: small, plausible changes to ``app/`` that each open one cross-user leak.

Every mutant is a few exact text replacements (old -> new) in files of ``app/``, the
kind of change a developer could make in a hurry, each from a real incident class.
``python -m isolation mutants`` applies them one at a time to a copy of ``app`` and
checks that the static checker and the runtime audit find what they should.
``CONTROL`` changes nothing: both checks must find the unmodified server clean.

An anchor (``old``) must occur exactly once in its file; when ``app/`` changes so that
one no longer does, the mutant fails loudly instead of silently testing nothing.
"""

from __future__ import annotations

from typing import Final

from ._model import Mutant, Replacement

__all__ = ["CATALOGUE", "CONTROL", "by_name"]

_FOREIGN_DATA: Final = frozenset({"foreign-canary"})

#: The echo agent's ``run``, whole: the agent mutants replace it with a variant that
#: waits between its steps, where another run's data can come in.
_ECHO_RUN: Final = """\
    async def run(self, run: RunContext, emit: Emit) -> Any:
        words = len(run.text.split())
        delay_s = self.delay_s
        # A wait before each event and one before the result, inline: a helper coroutine
        # per wait costs as much as the wait's own bookkeeping.
        for event in (
            AgentThinking(thought="I will count the words of your message."),
            ToolExecuting(tool_name="word_count", tool_input={"text": run.text}),
            ToolCompleted(tool_name="word_count", results={"words": words}),
        ):
            if delay_s > 0:
                await run.sleep(delay_s)
            await emit(event)
        if delay_s > 0:
            await run.sleep(delay_s)
        return {"text": run.text, "words": words}
"""

# -- singleton_manager: a process-wide event dispatcher that holds "the current user" ----------

_SINGLETON_MANAGER: Final = Mutant(
    name="singleton_manager",
    story=(
        "a process-wide EventDispatcher built with the services: connections register "
        "their socket under their user, a run sets the dispatcher's current user when it "
        "starts, and every run event goes to the current user's socket (request state on "
        "a shared manager object)"
    ),
    replacements=(
        Replacement(
            "services/_services.py",
            "from collections.abc import Callable\n",
            "from collections.abc import Callable\nfrom typing import Any\n",
        ),
        Replacement(
            "services/_services.py",
            "@attrs.frozen\nclass Services:\n",
            '''\
class EventDispatcher:
    """Delivers run events to users' sockets; one per process, built at startup.

    Each connection registers its socket under its user; ``use()`` sets the user
    the events are for, and must be called before a run starts.
    """

    def __init__(self) -> None:
        self.user_id: str | None = None
        self._sockets: dict[str, tuple[str, Any]] = {}

    def connect(self, user_id: str, connection_id: str, channel: Any) -> None:
        self._sockets[user_id] = (connection_id, channel)

    def use(self, user_id: str) -> None:
        self.user_id = user_id

    def route(self) -> tuple[str, Any]:
        if self.user_id is None:
            raise RuntimeError("EventDispatcher.route() without a user: call use() first")
        return self._sockets[self.user_id]


@attrs.frozen
class Services:
''',
        ),
        Replacement(
            "services/_services.py",
            "    wall_clock: Callable[[], float] = time.time\n",
            "    wall_clock: Callable[[], float] = time.time\n"
            "    dispatcher: EventDispatcher = attrs.field(factory=EventDispatcher)\n",
        ),
        Replacement(
            "session/_emitter.py", "import logging\n", "import logging\nfrom typing import Any\n"
        ),
        Replacement(
            "session/_emitter.py",
            "    log: logging.Logger\n",
            "    log: logging.Logger\n    dispatcher: Any = None\n",
        ),
        Replacement(
            "session/_emitter.py",
            "        return self.write(self.connection_id, (frame,), deferred, ticket)\n",
            "        connection_id, write = self.dispatcher.route()\n"
            "        return write(connection_id, (frame,), False, ticket)\n",
        ),
        Replacement(
            "session/_session.py",
            """\
        self._emitter = EventEmitter(
            self._connection_id,
            self._state,
            self._write,
            self._log,
            self._record,
            flush=self._flush,
            metrics=lifecycle.metrics,
        )
""",
            """\
        self._emitter = EventEmitter(
            self._connection_id,
            self._state,
            self._write,
            self._log,
            dispatcher=services.dispatcher,
            record=self._record,
            flush=self._flush,
            metrics=lifecycle.metrics,
        )
        services.dispatcher.connect(context.user_id, self._connection_id, self._write)
""",
        ),
        Replacement(
            "session/_session.py",
            "        agent = self._services.agent\n",
            "        self._services.dispatcher.use(self._context.user_id)\n"
            "        agent = self._services.agent\n",
        ),
    ),
    expected_static=frozenset(),
    expected_runtime=True,
    signature=frozenset({"foreign-run", "foreign-canary"}),
)

# -- registry_by_client_id: run events follow the client_id to its latest connection --------

_REGISTRY_BY_CLIENT_ID: Final = Mutant(
    name="registry_by_client_id",
    story=(
        "'resume after reconnect': a module-level registry routes each run's events to the "
        "connection that last used its client_id, which is not unique across users (Django "
        "Channels 3.0, CVE-2020-35681: the last socket received everyone's messages)"
    ),
    replacements=(
        Replacement(
            "session/_emitter.py",
            "class InvalidEvent(Exception):\n",
            """\
#: client_id -> the connection that last used it: a client that reconnects with the
#: same client_id gets the rest of its run's events there.
_ROUTES: dict[str, tuple[str, Write]] = {}


class InvalidEvent(Exception):
""",
        ),
        Replacement(
            "session/_emitter.py",
            "    record: Record | None = None\n",
            "    record: Record | None = None\n"
            "    routes: dict[str, str] = attrs.field(factory=dict)\n",
        ),
        Replacement(
            "session/_emitter.py",
            "        return self.write(self.connection_id, (frame,), deferred, ticket)\n",
            "        connection_id, write = self._route(run_id, payload)\n"
            "        return write(connection_id, (frame,), False, ticket)\n",
        ),
        Replacement(
            "session/_emitter.py",
            "\n\ndef encode_run_wire(",
            """

    def _route(self, run_id: str, payload: RunPayload) -> tuple[str, Write]:
        if isinstance(payload, AgentStarted) and payload.client_id is not None:
            _ROUTES[payload.client_id] = (self.connection_id, self.write)
            self.routes[run_id] = payload.client_id
        home = (self.connection_id, self.write)
        return _ROUTES.get(self.routes.get(run_id, ""), home)


def encode_run_wire(""",
        ),
    ),
    expected_static=frozenset({"ISO101"}),
    expected_runtime=True,
    signature=frozenset({"foreign-run", "foreign-canary"}),
)

# -- pooled_desync: a pooled backend connection returned to the pool mid-request ----------

_POOLED_DESYNC: Final = Mutant(
    name="pooled_desync",
    story=(
        "the agent asks a 'model' over a module-level connection pool; a run cancelled "
        "mid-request returns its connection with the response unread, so the next run reads "
        "the previous user's answer (ChatGPT, 20 March 2023: redis-py #2624)"
    ),
    replacements=(
        Replacement(
            "agents/_agent.py",
            "import importlib\n",
            "import importlib\nfrom collections import deque\n",
        ),
        Replacement(
            "agents/_agent.py",
            "@attrs.frozen\nclass EchoAgent:\n",
            '''\
class _ModelConnection:
    """One connection to the model backend: responses arrive in request order."""

    def __init__(self) -> None:
        self._responses: deque[str] = deque()

    async def ask(self, prompt: str, latency_s: float) -> str:
        self._responses.append(f"(model) {prompt}")  # the backend's answer, on its way
        await trio.sleep(latency_s)
        return self._responses.popleft()


class _ModelPool:
    """Connections to the model, reused across runs like any client's pool (oldest first)."""

    def __init__(self) -> None:
        self._idle: deque[_ModelConnection] = deque()

    async def ask(self, prompt: str, *, latency_s: float) -> str:
        connection = self._idle.popleft() if self._idle else _ModelConnection()
        try:
            return await connection.ask(prompt, latency_s)
        finally:
            self._idle.append(connection)  # back to the pool, even after a cancel


_MODEL = _ModelPool()


@attrs.frozen
class EchoAgent:
''',
        ),
        Replacement(
            "agents/_agent.py",
            _ECHO_RUN,
            """\
    async def run(self, run: RunContext, emit: Emit) -> Any:
        # The plan and the answer come from the model (the slow part), over the pool.
        thought = await _MODEL.ask(f"plan an answer to: {run.text}", latency_s=4 * self.delay_s)
        await emit(AgentThinking(thought=thought))
        words = len(run.text.split())
        for event in (
            ToolExecuting(tool_name="word_count", tool_input={"text": run.text}),
            ToolCompleted(tool_name="word_count", results={"words": words}),
        ):
            if self.delay_s > 0:
                await run.sleep(self.delay_s)
            await emit(event)
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        answer = await _MODEL.ask(f"answer: {run.text}", latency_s=4 * self.delay_s)
        return {"text": answer, "words": words}
""",
        ),
    ),
    expected_static=frozenset({"ISO101"}),
    expected_runtime=True,
    signature=_FOREIGN_DATA,
)

# -- lru_cache_user_data: conversation memory memoised by thread_id -----------------------

_LRU_CACHE_USER_DATA: Final = Mutant(
    name="lru_cache_user_data",
    story=(
        "conversation memory through functools.lru_cache keyed by thread_id, which clients "
        "choose and do not own: a user sees earlier messages of another user's thread "
        "(per-user data cached under a shared key, e.g. Steam store, 25 Dec 2015)"
    ),
    replacements=(
        Replacement(
            "agents/_agent.py", "import importlib\n", "import functools\nimport importlib\n"
        ),
        Replacement(
            "agents/_agent.py",
            "@attrs.frozen\nclass EchoAgent:\n",
            '''\
@functools.lru_cache(maxsize=1024)
def _thread_history(thread_id: str) -> list[str]:
    """The messages of a thread so far, so that the agent can refer back to them."""
    return []


@attrs.frozen
class EchoAgent:
''',
        ),
        Replacement(
            "agents/_agent.py",
            _ECHO_RUN,
            """\
    async def run(self, run: RunContext, emit: Emit) -> Any:
        history = _thread_history(run.thread_id)
        earlier = " / ".join(history[-2:]) or "nothing"
        history.append(run.text)
        words = len(run.text.split())
        thought = f"I will count the words of your message. Earlier on this thread: {earlier}"
        for event in (
            AgentThinking(thought=thought),
            ToolExecuting(tool_name="word_count", tool_input={"text": run.text}),
            ToolCompleted(tool_name="word_count", results={"words": words}),
        ):
            if self.delay_s > 0:
                await run.sleep(self.delay_s)
            await emit(event)
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        return {"text": run.text, "words": words}
""",
        ),
    ),
    expected_static=frozenset({"ISO104"}),
    expected_runtime=True,
    signature=_FOREIGN_DATA,
)

# -- contextvar_shared_mutable: ContextVar("...", default={}) filled in by the session -----

_CONTEXTVAR_SHARED_MUTABLE: Final = Mutant(
    name="contextvar_shared_mutable",
    story=(
        "the session puts the run's text in ContextVar('current_run', default={}) for the "
        "agent's helpers; nobody calls set(), so every task's copied context shares the one "
        "dict and the agent reads whichever run wrote last"
    ),
    replacements=(
        Replacement(
            "agents/_agent.py",
            "import importlib\n",
            "import importlib\nfrom contextvars import ContextVar\n",
        ),
        Replacement(
            "agents/_agent.py",
            "AgentPayload = AgentThinking | AgentDelta | ToolExecuting | ToolCompleted\n",
            """\
AgentPayload = AgentThinking | AgentDelta | ToolExecuting | ToolCompleted
#: The run being served, for helpers that are not handed ``run``; the session fills it in.
CURRENT_RUN: ContextVar[dict[str, str]] = ContextVar("current_run", default={})
""",
        ),
        Replacement(
            "agents/_agent.py",
            _ECHO_RUN,
            """\
    async def run(self, run: RunContext, emit: Emit) -> Any:
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        await emit(AgentThinking(thought="I will count the words of your message."))
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        text = CURRENT_RUN.get()["text"]
        await emit(ToolExecuting(tool_name="word_count", tool_input={"text": text}))
        words = len(text.split())
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        await emit(ToolCompleted(tool_name="word_count", results={"words": words}))
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        return {"text": run.text, "words": words}
""",
        ),
        Replacement(
            "session/_session.py",
            "from ..agents._agent import RunContext\n",
            "from ..agents._agent import CURRENT_RUN, RunContext\n",
        ),
        Replacement(
            "session/_session.py",
            "        started = AgentStarted(",
            '        CURRENT_RUN.get()["text"] = run.text\n        started = AgentStarted(',
        ),
    ),
    expected_static=frozenset({"ISO106"}),
    expected_runtime=True,
    signature=_FOREIGN_DATA,
)

# -- idor_cancel: run ids resolved through a process-wide table, without an owner check ----

_IDOR_CANCEL: Final = Mutant(
    name="idor_cancel",
    story=(
        "'cancel from another tab': run ids are resolved through a process-wide run_id -> "
        "cancel scope table with no owner check, so any user can cancel any run (IDOR; "
        "OWASP API1:2023 broken object level authorization)"
    ),
    replacements=(
        Replacement(
            "session/_session.py",
            "\n\ndef run_session(\n",
            """

#: Every live run of the process, so that a cancel sent from another tab reaches it.
_RUN_STOPS: dict[str, Callable[[], bool]] = {}


def run_session(
""",
        ),
        Replacement(
            "session/_session.py",
            "        # A run of this user whose connection left, on a thread this connection"
            " follows.\n",
            """\
        stop = _RUN_STOPS.get(run_id)  # a run of another tab, wherever it runs
        if stop is not None and stop():
            return
        # A run of this user whose connection left, on a thread this connection follows.
""",
        ),
        Replacement(
            "session/_session.py",
            "        thread.live_runs[run_id] = lambda: self._stop_run(run_id)\n",
            "        thread.live_runs[run_id] = _RUN_STOPS[run_id] = "
            "lambda: self._stop_run(run_id)\n",
        ),
        Replacement(
            "session/_session.py",
            "    def _forget_run(self, run_id: str, thread: ThreadLog) -> None:\n",
            "    def _forget_run(self, run_id: str, thread: ThreadLog) -> None:\n"
            "        _RUN_STOPS.pop(run_id, None)\n",
        ),
    ),
    expected_static=frozenset({"ISO101"}),
    expected_runtime=True,
    signature=frozenset({"idor-distinguishable", "idor-cancelled", "unrequested-cancel"}),
)

# -- global_last_context: a `global` caching the last run the agent served -----------------

_GLOBAL_LAST_CONTEXT: Final = Mutant(
    name="global_last_context",
    story=(
        "the agent keeps the last RunContext (user_id, text) in a module global 'for the "
        "crash report', and its tool step reads it back after an await (module-global "
        "'current user')"
    ),
    replacements=(
        Replacement(
            "agents/_agent.py",
            "@attrs.frozen\nclass EchoAgent:\n",
            """\
#: The last run the agent served, for the crash report.
_last_run: RunContext | None = None


@attrs.frozen
class EchoAgent:
""",
        ),
        Replacement(
            "agents/_agent.py",
            _ECHO_RUN,
            """\
    async def run(self, run: RunContext, emit: Emit) -> Any:
        global _last_run
        _last_run = run
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        await emit(AgentThinking(thought="I will count the words of your message."))
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        await emit(ToolExecuting(tool_name="word_count", tool_input={"text": _last_run.text}))
        words = len(_last_run.text.split())
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        await emit(ToolCompleted(tool_name="word_count", results={"words": words}))
        if self.delay_s > 0:
            await run.sleep(self.delay_s)
        return {"text": run.text, "words": words}
""",
        ),
    ),
    expected_static=frozenset({"ISO102"}),
    expected_runtime=True,
    signature=_FOREIGN_DATA,
)

# -- debug_session_registry: open sessions kept in a process-wide registry -----------------

_DEBUG_SESSION_REGISTRY: Final = Mutant(
    name="debug_session_registry",
    story=(
        "open sessions kept in a module-level WeakValueDictionary for a debug endpoint; "
        "nothing reads it yet, so no frame goes astray, but every user's session is now "
        "reachable from any code (the precondition of the delivery bugs above)"
    ),
    replacements=(
        Replacement("session/_session.py", "import math\n", "import math\nimport weakref\n"),
        Replacement(
            "session/_session.py",
            "\n\ndef run_session(\n",
            """

#: Open sessions by connection id, for the debug endpoint (weak: never keeps one alive).
_OPEN_SESSIONS: weakref.WeakValueDictionary[str, _Session] = weakref.WeakValueDictionary()


def run_session(
""",
        ),
        Replacement(
            "session/_session.py",
            "        self._alarm = Alarm()  # wakes the clock when a deadline moves earlier\n",
            "        self._alarm = Alarm()  # wakes the clock when a deadline moves earlier\n"
            "        _OPEN_SESSIONS[context.connection_id] = self\n",
        ),
        Replacement(
            "session/_session.py",
            '        "_alarm",\n',
            '        "__weakref__",\n        "_alarm",\n',
        ),
    ),
    expected_static=frozenset({"ISO101"}),
    expected_runtime=False,
)

#: The unmodified app: both checks must find it clean.
# -- history_by_thread_id: a history page looked up by the thread id alone ------------------

_HISTORY_BY_THREAD_ID: Final = Mutant(
    name="history_by_thread_id",
    story=(
        "history finds a thread by its id alone, whoever's it is ('server thread ids are 96 "
        "random bits: unique'), but clients choose their thread ids: another user's history "
        "answers for the same id (IDOR on a client-chosen key; OWASP API1:2023)"
    ),
    replacements=(
        Replacement(
            "threads/_memory.py",
            """\
        check_limit(limit)
        thread = await self._thread(user_id, thread_id)
        if thread is None:
            return [], False
""",
            """\
        check_limit(limit)
        thread = await self._find(thread_id)
        if thread is None:
            return [], False
""",
        ),
        Replacement(
            "threads/_memory.py",
            "    def _last_seq(self, key: ThreadKey) -> int:\n",
            """\
    async def _find(self, thread_id: str) -> _Thread | None:
        # Thread ids are unique: no need to know whose it is.
        await self._checkpoint()
        for threads in self._users.values():
            if thread_id in threads:
                return threads[thread_id]
        return None

    def _last_seq(self, key: ThreadKey) -> int:
""",
        ),
    ),
    expected_static=frozenset(),
    expected_runtime=True,
    signature=frozenset({"foreign-canary", "foreign-history", "thread-distinguishable"}),
)

# -- open_threads_by_thread_id: the table of live threads keyed by thread id alone -----------

_OPEN_THREADS_BY_THREAD_ID: Final = Mutant(
    name="open_threads_by_thread_id",
    story=(
        "the server's table of live (pinned) threads is keyed by thread_id alone, so a resume "
        "or a message naming another user's thread id joins that user's live thread: its "
        "followers, its numbering and its idempotency keys (a cache key missing the tenant)"
    ),
    replacements=(
        Replacement(
            "threads/_logs.py",
            "        self._open: dict[tuple[str, str], ThreadLog] = {}\n",
            "        self._open: dict[str, ThreadLog] = {}  # thread ids are unique\n",
        ),
        Replacement(
            "threads/_logs.py",
            """\
    async def _open_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = (user_id, thread_id)
""",
            """\
    async def _open_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = thread_id
""",
        ),
        Replacement(
            "threads/_logs.py",
            """\
    def _create_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = (user_id, thread_id)
""",
            """\
    def _create_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = thread_id
""",
        ),
        Replacement(
            "threads/_logs.py",
            "            key = (thread.user_id, thread.thread_id)\n",
            "            key = thread.thread_id\n",
        ),
    ),
    expected_static=frozenset(),
    expected_runtime=True,
    signature=frozenset(
        {"foreign-canary", "foreign-run", "foreign-start", "thread-distinguishable"}
    ),
)

# -- idempotency_by_client_id: retries answered from a server-wide client_id cache ----------

_IDEMPOTENCY_BY_CLIENT_ID: Final = Mutant(
    name="idempotency_by_client_id",
    story=(
        "a server-wide idempotency cache client_id -> run_id on the thread logs, so that a "
        "retry is answered even before its thread is loaded; client ids are the client's "
        "choice and collide across users, so a user's message is answered duplicate_message "
        "with another user's run id (idempotency keys not scoped to the user)"
    ),
    replacements=(
        Replacement(
            "threads/_logs.py",
            "        self._pending: list[Entry] = []\n",
            "        self._pending: list[Entry] = []\n"
            "        self.accepted: dict[str, str] = {}  # client_id -> run_id, for retries\n",
        ),
        Replacement(
            "session/_session.py",
            "        first = None if client_id is None else thread.client_ids.get(client_id)\n",
            """\
        accepted = self._lifecycle.threads.accepted
        first = None if client_id is None else accepted.get(client_id)
""",
        ),
        Replacement(
            "session/_session.py",
            "            thread.client_ids[client_id] = run_id  # claimed",
            "            thread.client_ids[client_id] = accepted[client_id] = run_id  # claimed",
        ),
    ),
    expected_static=frozenset(),
    expected_runtime=True,
    signature=frozenset({"foreign-duplicate"}),
)

CONTROL: Final = Mutant(
    name="control",
    story="the unmodified app",
    replacements=(),
    expected_static=frozenset(),
    expected_runtime=False,
)

#: Every mutant, in the order of the report.
CATALOGUE: Final = (
    _SINGLETON_MANAGER,
    _REGISTRY_BY_CLIENT_ID,
    _POOLED_DESYNC,
    _LRU_CACHE_USER_DATA,
    _CONTEXTVAR_SHARED_MUTABLE,
    _IDOR_CANCEL,
    _GLOBAL_LAST_CONTEXT,
    _DEBUG_SESSION_REGISTRY,
    _HISTORY_BY_THREAD_ID,
    _OPEN_THREADS_BY_THREAD_ID,
    _IDEMPOTENCY_BY_CLIENT_ID,
)


def by_name(names: tuple[str, ...] | list[str]) -> tuple[Mutant, ...]:
    """The mutants named, in catalogue order; raises KeyError naming an unknown one."""
    known = {mutant.name for mutant in CATALOGUE}
    for name in names:
        if name not in known:
            raise KeyError(name)
    return tuple(mutant for mutant in CATALOGUE if mutant.name in names)
