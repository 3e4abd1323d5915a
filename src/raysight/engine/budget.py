"""data.max_tokens: the run covers the fewest leading shards whose tokens reach the budget.

Shards finish in any order, so the budget is judged on the finished prefix: shard k counts once
shards 0..k are all done. The runners ask ``more()`` before starting a shard; shards after the
one that reached the budget that finished meanwhile are dropped by the run (``extra``), so the
dataset does not depend on the number of actors.
"""

from __future__ import annotations

from ..dataset.manifest import ShardEntry

__all__ = ["TokenBudget"]


class TokenBudget:
    def __init__(self, max_tokens: int | None, shards: dict[int, ShardEntry]):
        self.max_tokens, self.shards = max_tokens, shards  # the manifest's live shard entries
        self.next = 0  # first shard of the prefix not yet counted
        self.tokens = 0
        self.last: int | None = None  # the shard at which the budget was reached

    def _advance(self) -> None:
        while self.last is None:
            entry = self.shards.get(self.next)
            if entry is None or not entry.done:
                return
            self.tokens += entry.tokens
            if self.tokens >= self.max_tokens:
                self.last = self.next
            self.next += 1

    def more(self) -> bool:
        """Whether another shard may be started."""
        if self.max_tokens is None:
            return True
        self._advance()
        return self.last is None

    def extra(self) -> list[int]:
        """Shards after the last one the budget needed (empty until it is reached)."""
        self.more()
        if self.last is None:
            return []
        return sorted(k for k in self.shards if k > self.last)
