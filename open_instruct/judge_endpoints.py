"""Where judge requests go: the replicas of one judge, and the direct HTTP path to a self-hosted one.

Several replicas. `--llm_judge_api_base` may name several OpenAI-compatible servers of the same judge
(comma-separated). Each request goes to the replica with the fewest requests outstanding (ties in turn);
a replica whose request fails with a connection error, a timeout or a 5xx/429 leaves the rotation for a
cool-down, and the request is sent at once to a replica it has not tried. When every replica is cooling
down, the one that comes back first is used: a judge with all replicas down still fails after the client's
retries rather than never.

Direct HTTP. A `hosted_vllm/` judge speaks the OpenAI chat schema, so it needs no provider translation:
the client posts to `<api_base>/chat/completions` itself over one pooled aiohttp session per event loop.
Through litellm the same call costs about 3 ms of CPU (logging payloads, a price look-up, response
re-typing), which capped a reward server at about 260 rewards/s on 2 cores (benchmarks/judge_stage.py);
every other provider still goes through litellm. litellm's Router was measured too: about 100 rewards/s
with two replicas, its per-call bookkeeping on top of litellm's own.
"""

import asyncio
import json
import logging
import time
import weakref

log = logging.getLogger(__name__)


def parse_api_bases(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The endpoints an api base setting names: one URL, several separated by commas or spaces, or a list.
    Trailing slashes are dropped; raises ValueError for an entry that is not an http(s) URL."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v).strip() for v in value]
    bases = []
    for item in items:
        if not item.startswith(("http://", "https://")):
            raise ValueError(f"{item!r} is not an http(s) URL")
        bases.append(item.rstrip("/"))
    return bases


class EndpointPool:
    """Least-outstanding choice among replicas, with a cool-down for one that failed."""

    def __init__(self, bases: list[str], cooldown: float, cap: int | None = None):
        """`cap`: the most requests outstanding at one replica (the client's per-replica concurrency)."""
        self.bases = list(bases)
        self.cooldown = cooldown
        self.cap = cap
        self.outstanding = [0] * len(bases)
        self.down_until = [0.0] * len(bases)
        self.failures = [0] * len(bases)
        self._turn = 0

    def __len__(self) -> int:
        return len(self.bases)

    def available(self, exclude: set[int] = frozenset()) -> list[int]:
        now = time.monotonic()
        return [
            i
            for i in range(len(self.bases))
            if i not in exclude
            and self.down_until[i] <= now
            and (self.cap is None or self.outstanding[i] < self.cap)
        ]

    def pick(self, exclude: set[int] = frozenset()) -> int | None:
        """A replica in rotation, below its cap and not in `exclude`, with the fewest outstanding requests; or
        None."""
        candidates = self.available(exclude)
        if not candidates:
            return None
        self._turn += 1
        n = len(self.bases)
        return min(candidates, key=lambda i: (self.outstanding[i], (i - self._turn) % n))

    def pick_any(self) -> int:
        """A replica even when all are cooling down: the one whose cool-down ends first."""
        choice = self.pick()
        return choice if choice is not None else min(range(len(self.bases)), key=self.down_until.__getitem__)

    def fail(self, i: int, reason: str) -> None:
        """Take replica i out of rotation for the cool-down (only one of several: a lone judge stays)."""
        self.failures[i] += 1
        if len(self.bases) < 2:
            return
        was_up = self.down_until[i] <= time.monotonic()
        self.down_until[i] = time.monotonic() + self.cooldown
        if was_up:
            log.warning("judge replica %s out of rotation for %gs: %s", self.bases[i], self.cooldown, reason)


# The most a judge answer may be: a chat completion of a few thousand tokens is tens of KiB; anything near
# this is a proxy or a server gone wrong, read no further.
MAX_ANSWER_BYTES = 8 * 2**20


class BadAnswer(Exception):
    """A judge server answered something that is not a chat completion (too big, not JSON, no choices)."""


class HTTPStatusError(Exception):
    """A judge server answered with an error status; `status_code` is what the retry policy reads."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


class DirectHTTP:
    """POSTs OpenAI chat requests over one aiohttp session per event loop (a session belongs to its loop)."""

    def __init__(self):
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _session(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # No connection cap here: the client's semaphore bounds the requests in flight.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
            self._sessions[loop] = session
            # asyncio has no hook for a loop's end, but asyncio.run (and loop.shutdown_asyncgens) finalizes
            # the async generators still open in it: one that owns the session closes it there, so a caller
            # that never calls close() leaves no open connections behind.
            closer = _close_at_shutdown(session)
            loop.create_task(anext(closer))
            self._closers[loop] = closer
        return session

    async def chat(self, api_base: str, payload: dict, api_key: str | None) -> dict:
        import aiohttp

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with self._session().post(
                f"{api_base}/chat/completions", json=payload, headers=headers
            ) as response:
                body = await _read_capped(response)
                if response.status != 200:
                    raise HTTPStatusError(response.status, _error_message(body.decode(errors="replace")))
                try:
                    data = json.loads(body)
                except ValueError:
                    kind = response.headers.get("Content-Type", "no content type")
                    raise BadAnswer(
                        f"answered 200 with a body that is not JSON ({kind}): {body[:60].decode(errors='replace')!r}"
                    ) from None
                if not (isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]):
                    raise BadAnswer(f"answered 200 without choices: {body[:60].decode(errors='replace')!r}")
                return data
        except aiohttp.ClientConnectionError as exc:
            # The builtin type, so the client's retry policy and unreachable check need no aiohttp.
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close this loop's session (call from the loop that used it)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


async def _read_capped(response) -> bytes:
    """The body, or BadAnswer past MAX_ANSWER_BYTES (read no further than that)."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise BadAnswer(f"answered {response.content_length} bytes, more than {MAX_ANSWER_BYTES} (not read)")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(2**16):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise BadAnswer(f"answered more than {MAX_ANSWER_BYTES} bytes (not read further)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _close_at_shutdown(session):
    try:
        yield
    finally:
        await session.close()


def _error_message(body: str) -> str:
    """The message of an OpenAI-style error body (`{"error": {"message": ...}}` or vLLM's `{"message": ...}`)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(inner, str):
            return inner[:300]
    return body.strip()[:300]
