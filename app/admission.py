"""Admission control: how much work the server takes on before it answers 429.

Two bounds. Requests: every POST holds a slot from arrival to its last byte; there are
`max_num_seqs + max_queued_requests` slots, so beyond the running batch at most
`max_queued_requests` wait. The check is a counter compare made before the body is read, so a
rejection costs microseconds and no tokenization. Tokens: once a prompt is tokenized (which its
validation needs anyway), its length plus its `max_tokens` is held against `max_queued_tokens`, so a
few huge requests cannot fill the queue either. Both are released when the response ends.
"""

from __future__ import annotations

from app.errors import APIError, rate_limited
from app.request_context import RequestContext


class Admission:
    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0

    def try_admit(self) -> APIError | None:
        """Takes a request slot, or returns the 429 to answer."""
        if self.requests >= self.max_requests:
            return rate_limited(
                f"The server is at capacity ({self.max_requests} requests in progress); "
                "retry after the delay in the Retry-After header.",
                "requests",
            )
        self.requests += 1
        return None

    def reserve_tokens(self, context: RequestContext, tokens: int) -> None:
        """Holds `tokens` for the request, or raises the 429 to answer. A request that alone exceeds
        the bound is still admitted when nothing else holds tokens, so it is never refused forever."""
        if self.tokens > 0 and self.tokens + tokens > self.max_tokens:
            raise rate_limited(
                f"The server is at capacity ({self.tokens} of {self.max_tokens} tokens in progress); "
                "retry after the delay in the Retry-After header.",
                "tokens",
            )
        self.tokens += tokens
        context.reserved_tokens += tokens

    def release(self, context: RequestContext) -> None:
        self.requests -= 1
        self.tokens -= context.reserved_tokens
        context.reserved_tokens = 0
