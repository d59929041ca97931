"""One-round-trip admission check on the `limits` library's sliding-window counters (a Lua script).

Why a script: with the library's strategy API an admission check needs three round trips — window stats of
the request and token limits, then the request hit — because each is its own Lua script call, and each call
costs client CPU as well as a round trip. `CHECK` does the same in one EVALSHA,
atomically: it reads both windows, refuses on tokens first, otherwise counts the request unless its budget is
spent, and returns the raw window figures that the response headers need. It takes a batch of checks, so
concurrent requests can share one call (`gateway.ratelimit.batching.GroupCommit`).

Semantics are the library's own (`limits` 5.x `SlidingWindowCounterRateLimiter`, Redis storage): two keys
per limit (`{key}` current, `{key}/-1` previous), a current window older than one period is shifted into the
previous slot, the weighted count is ``floor(previous * previous_ttl / period) + current``, and a first hit
creates the current window with a TTL of two periods. The keys are the library's (derived through its
storage), so `debit_tokens`, which still goes through the library's strategy, updates the very same counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.util import WindowStats

# A batch of checks, each as if made alone, in order (a later check of the same identity sees the earlier hit).
# KEYS: 4 per check: requests previous, requests current, tokens previous, tokens current
# ARGV: period ms, then 4 per check: requests limit (0: unlimited), tokens limit (0: unlimited), tokens needed,
#   requests wanted (a lease, `gateway.ratelimit.lease`: 1 for a plain check)
# returns 10 numbers per check: verdict (0 allowed, 1 requests spent, 2 tokens spent), then the windows before
#   the check: requests previous count, previous ttl ms, current count, current ttl ms, and the same for tokens,
#   then the requests granted (counted): at most the wanted number and what the window has left, 0 if refused
CHECK = """
local function window(previous, current, period)
  local ttl = tonumber(redis.call('pttl', current))
  if ttl > 0 and ttl < period then
    redis.call('rename', current, previous)
    redis.call('set', current, 0, 'PX', ttl + period)
  end
  return tonumber(redis.call('get', previous)) or 0, math.max(tonumber(redis.call('pttl', previous)), 0),
         tonumber(redis.call('get', current)) or 0, math.max(tonumber(redis.call('pttl', current)), 0)
end

local function weighted(pc, pt, cc, period)
  return math.floor(pc * pt / period) + cc
end

local period = tonumber(ARGV[1])
local out = {}
for c = 0, #KEYS / 4 - 1 do
  local k, a = c * 4, c * 4 + 1
  local req_limit, tok_limit, needed = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local wanted = tonumber(ARGV[a + 4])
  local rpc, rpt, rcc, rct, tpc, tpt, tcc, tct = 0, 0, 0, 0, 0, 0, 0, 0
  if req_limit > 0 then rpc, rpt, rcc, rct = window(KEYS[k + 1], KEYS[k + 2], period) end
  if tok_limit > 0 then tpc, tpt, tcc, tct = window(KEYS[k + 3], KEYS[k + 4], period) end
  local verdict, granted = 0, 1
  if tok_limit > 0 and tok_limit - weighted(tpc, tpt, tcc, period) < needed then
    verdict, granted = 2, 0
  elseif req_limit > 0 then
    local left = req_limit - weighted(rpc, rpt, rcc, period)
    if left < 1 then
      verdict, granted = 1, 0
    else
      granted = math.min(wanted, left)
      if redis.call('exists', KEYS[k + 2]) == 1 then
        redis.call('incrby', KEYS[k + 2], granted)
      else
        redis.call('set', KEYS[k + 2], granted, 'PX', period * 2)
      end
    end
  end
  for _, v in ipairs({verdict, rpc, rpt, rcc, rct, tpc, tpt, tcc, tct, granted}) do out[#out + 1] = v end
end
return out
"""
FIGURES = 10  # numbers the script returns per check

ALLOWED, REQUESTS_SPENT, TOKENS_SPENT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's raw sliding-window figures as the script returns them (counts, TTLs in ms)."""

    previous: int
    previous_ttl_ms: int
    current: int
    current_ttl_ms: int

    def stats(self, amount: int, period_s: float, now: float) -> WindowStats:
        """(reset time, remaining), exactly as `SlidingWindowCounterRateLimiter.get_window_stats` computes it."""
        previous_ttl, current_ttl = self.previous_ttl_ms / 1000, self.current_ttl_ms / 1000
        remaining = max(0, amount - math.floor(self.previous * previous_ttl / period_s + self.current))
        if not (self.previous or self.current):
            return WindowStats(now, remaining)
        previous_reset = previous_ttl % (period_s / self.previous) if self.previous else math.inf
        current_reset = current_ttl % period_s if self.current else math.inf
        return WindowStats(now + min(previous_reset, current_reset), remaining)


def window_keys(storage: RedisStorage, item: RateLimitItem, identity: str) -> tuple[str, str]:
    """(previous, current) Redis keys of `item` for `identity`, as the library's storage names them."""
    key = item.key_for(identity)
    prefixed = storage.bridge.prefixed_key
    return prefixed(storage._previous_window_key(key)), prefixed(storage._current_window_key(key))
