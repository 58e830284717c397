"""Cache-aware replica choice: which pod most likely still holds a request's prefix in its KV
cache, weighed against the requests each pod has in flight.

A multi-turn chat or an agent's tool loop resends a growing prefix, and the runtime reuses the
KV cache of a slot that evaluated that prefix before. Least-in-flight scatters a conversation
over the pods and loses the reuse. The gateway cannot see the pods' caches, so it estimates
them from what it sent where: the text of each request (the messages' roles and contents in
order, or the prompt) is cut into chunks, each chunk's hash chained to the ones before it and
seeded with the model, so one hash stands for a whole prefix; each pod keeps the hashes of its
latest requests in a bounded LRU (``PrefixIndex``).

The choice scores each pod as ``matched prefix share - load_weight * relative load`` (the vLLM
production stack's router, llm-d's prefix and load scorers) among the pods whose load stays
under a bound of ``load_factor`` times the mean, and at least one request above an even split
(KubeAI's PrefixHash: consistent hashing with bounded loads). So a conversation sticks to its
pod, a hot prefix spreads once its pod is clearly busier than the others, and a new
conversation (which matches nowhere, or only a shared system prompt) goes to the least busy
pod. ``routing_outcome`` names what each choice did with the prefix (for the gateway's
metrics). Everything here is pure apart from the index, which only the event loop touches.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

CACHE_AWARE = "CacheAware"
LEAST_IN_FLIGHT = "LeastInFlight"
STRATEGIES = (CACHE_AWARE, LEAST_IN_FLIGHT)
"""``spec.routing.strategy`` of a ModelServer; CacheAware when unset."""

CHUNK_CHARS = 64
"""Characters per hashed chunk: about 16 tokens, finer than any reuse worth routing for."""
MAX_CHUNKS = 512
"""Chunks hashed per request (32 k characters): a longer text is told apart by its beginning,
and hashing it all would cost the hot path more than the choice gains."""
ENTRIES_PER_POD = 16384
"""Prefix hashes remembered per pod (a few MB of the gateway's memory at most): some hundred
conversations of a few thousand characters, more than a pod's slots keep cached at once."""
LOAD_WEIGHT = 0.1
"""β: how much a pod's relative load (its requests in flight over the load bound) counts
against its matched prefix share. Small, because a pod with a free slot batches one more
request at little cost while moving a conversation pays its whole history's prefill again; the
load bound, not this weight, is what spreads a saturated pod's prefixes. At 0.25 a second turn
(whose own history is a tenth or so of its text beside a shared system prompt every pod holds)
left a pod that had one request more in flight than an idle one, and paid its history's
prefill on a pod whose slots were all taken by other conversations."""
LOAD_FACTOR = 1.25
"""A pod may hold at most this many times the mean requests in flight and still be chosen for
its cache (KubeAI's default bound)."""
LOAD_SLACK = 1
"""…and at least this many requests above an even split of them: at a few requests in flight
the factor alone (ceil(1.25 x 1.5) = 2) sent a conversation away from a pod with two requests
beside an idle one, where its free slots would have batched it at little cost."""

HIT = "hit"
"""The chosen pod holds the longest prefix of the request that any pod holds."""
SPILL = "spill"
"""Another pod held more of it: the load (or LeastInFlight) sent it elsewhere."""
MISS = "miss"
"""No pod held any of it (a new text, or a new pod)."""

Prefix = tuple[bytes, ...]
"""Chained chunk hashes of one request's text; element i stands for its first i + 1 chunks."""


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of OpenAI's content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def request_text(data: Mapping[str, Any]) -> str:
    """The text a request's prompt is rendered from, in the order the template renders it, so
    that each turn of a conversation starts with the text of the turn before: the tools, then
    each message's role and content (chat), or the system and the prompt (generate, raw or not).
    Empty when there is nothing to reuse (embeddings, show, an unload)."""
    parts: list[str] = []
    tools = data.get("tools")
    if tools:
        parts.append(json.dumps(tools, sort_keys=True, default=str))
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role")
                parts.append(f"\x1e{role}\x1f{_content_text(message.get('content'))}")
        return "".join(parts)
    prompt = data.get("prompt")
    if isinstance(prompt, list):
        # OpenAI's completions take a list of prompts: the first decides where the batch goes.
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    if isinstance(prompt, str) and prompt:
        system = data.get("system")
        if isinstance(system, str) and system:
            parts.append(f"\x1esystem\x1f{system}")
        parts.append(f"\x1eprompt\x1f{prompt}")
    return "".join(parts)


def prefix_hashes(
    model: str, text: str, chunk_chars: int = CHUNK_CHARS, max_chunks: int = MAX_CHUNKS
) -> Prefix:
    """The chained hashes of ``text``'s chunks (the last may be partial), seeded with the model:
    two requests share their first k hashes exactly when their first k chunks are equal and
    they name the same model. Empty for an empty text."""
    if not text:
        return ()
    hashes: list[bytes] = []
    previous = hashlib.blake2b(model.encode(), digest_size=8).digest()
    limit = min(len(text), chunk_chars * max_chunks)
    for start in range(0, limit, chunk_chars):
        chunk = text[start : start + chunk_chars].encode("utf-8", "surrogatepass")
        previous = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        hashes.append(previous)
    return tuple(hashes)


class PrefixIndex:
    """Per pod, the prefix hashes the gateway sent it most recently: an LRU of at most
    ``entries_per_pod`` hashes each, so memory stays bounded however many conversations pass.
    Pods that leave the routing table are forgotten with ``keep_only``."""

    def __init__(self, entries_per_pod: int = ENTRIES_PER_POD) -> None:
        self.entries_per_pod = entries_per_pod
        self._pods: dict[str, OrderedDict[bytes, None]] = {}

    def matched(self, endpoint: str, prefix: Prefix) -> int:
        """How many leading chunks of ``prefix`` the pod was sent (the chain makes the first
        missing hash the end of the shared prefix)."""
        seen = self._pods.get(endpoint)
        if not seen:
            return 0
        count = 0
        for digest in prefix:
            if digest not in seen:
                break
            count += 1
        return count

    def record(self, endpoint: str, prefix: Prefix) -> None:
        """``prefix`` was sent to the pod: its hashes become the newest, the oldest go. The
        leading ones are made newest of all: they are the most shared (a system prompt), and a
        chain that lost its tail still matches as far as it goes, one that lost its head not
        at all."""
        if not prefix:
            return
        seen = self._pods.setdefault(endpoint, OrderedDict())
        for digest in reversed(prefix):
            seen[digest] = None
            seen.move_to_end(digest)
        while len(seen) > self.entries_per_pod:
            seen.popitem(last=False)

    def keep_only(self, endpoints: Collection[str]) -> None:
        """Forget the pods not in ``endpoints`` (they are gone, and so is their cache)."""
        for endpoint in [e for e in self._pods if e not in endpoints]:
            del self._pods[endpoint]

    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._pods)

    def size(self, endpoint: str) -> int:
        return len(self._pods.get(endpoint) or ())


def load_bound(
    in_flight_total: int,
    pods: int,
    load_factor: float = LOAD_FACTOR,
    load_slack: int = LOAD_SLACK,
) -> int:
    """The most requests a pod may have in flight, counting this one, and still be chosen for
    its cache: ``load_factor`` times the mean load with this request added, and at least
    ``load_slack`` more than that mean (rounded up). The least busy pod is always under it, so
    some pod always is."""
    mean = (in_flight_total + 1) / max(1, pods)
    return max(1, math.ceil(load_factor * mean), math.ceil(mean) + load_slack)


def affinity_score(matched_share: float, in_flight: int, bound: int, load_weight: float) -> float:
    """Expected prefix reuse against load: the matched share of the request's prefix minus
    ``load_weight`` times the pod's load relative to the bound."""
    return matched_share - load_weight * in_flight / bound


def pick_cache_aware(
    endpoints: Sequence[str],
    in_flight: Mapping[str, int],
    matched: Mapping[str, int],
    chunks: int,
    exclude: Collection[str] = (),
    turn: int = 0,
    *,
    load_weight: float = LOAD_WEIGHT,
    load_factor: float = LOAD_FACTOR,
) -> str | None:
    """The pod for a request of ``chunks`` hashed chunks, ``matched[e]`` of which pod ``e`` was
    sent before: the best ``affinity_score`` among the pods under the load bound, skipping
    ``exclude``. Ties go to the pod with fewer requests in flight, then rotate with ``turn``,
    so with nothing matched anywhere this is least-in-flight."""
    candidates = [e for e in endpoints if e not in exclude]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    loads = {e: in_flight.get(e, 0) for e in candidates}
    bound = load_bound(sum(loads.values()), len(candidates), load_factor)
    eligible = [e for e in candidates if loads[e] + 1 <= bound] or candidates
    scores = {
        e: affinity_score(matched.get(e, 0) / max(1, chunks), loads[e], bound, load_weight)
        for e in eligible
    }
    best = max(scores.values())
    tied = [e for e in eligible if best - scores[e] < 1e-9]
    fewest = min(loads[e] for e in tied)
    tied = [e for e in tied if loads[e] == fewest]
    return tied[turn % len(tied)]


def routing_outcome(
    endpoints: Sequence[str],
    matched: Mapping[str, int],
    chosen: str,
    exclude: Collection[str] = (),
) -> str:
    """What a choice did with the request's prefix: ``HIT`` where ``chosen`` holds as much of
    it as any pod that could be chosen, ``SPILL`` where another held more, ``MISS`` where none
    held any. Pods in ``exclude`` (tried and failed) do not count: leaving them is no spill."""
    best = max((matched.get(e, 0) for e in endpoints if e not in exclude), default=0)
    if best == 0:
        return MISS
    return HIT if matched.get(chosen, 0) >= best else SPILL
