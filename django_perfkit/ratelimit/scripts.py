"""The Lua scripts: one atomic round trip per check.

Every script reads the time from Redis (``TIME``), never from the app server:
all processes and hosts sharing one Redis then agree on the window without
synchronised clocks. Each check touches exactly one key, so it is atomic
under any concurrency and lands in one Redis Cluster slot.

ARGV[1] is one string, ``"limit period cost increment [offset]"``, and the
reply is one string, ``"allowed count remaining retry_after_ms reset_ms"``: one
bulk string each way is cheaper for redis-py to encode and parse than
separate values, and a check is measured in microseconds.
"""

from __future__ import annotations

from django_perfkit.redis import LuaScript

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s1, s2, s3, s4, rest = string.match(ARGV[1], '^(%S+) (%S+) (%S+) (%S+)(.*)$')
local limit, period, cost, increment = tonumber(s1), tonumber(s2), tonumber(s3), tonumber(s4)
local function reply(allowed, count, remaining, retry, reset)
  return string.format('%d %d %d %d %d', allowed and 1 or 0, count, remaining,
                       math.ceil(math.max(retry, 0) * 1000), math.ceil(math.max(reset, 0) * 1000))
end
"""

#: Sliding-window counter (as Cloudflare's): the current window's count plus
#: the previous window's, weighted by how much of it still overlaps the
#: sliding window. Two numbers per key, in one hash. Rejected requests are not
#: counted, so a client that keeps hammering is let back in as its window slides.
SLIDING = LuaScript(
    _NOW
    + """
local win = math.floor(now / period)
local h = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(h[1])
local cur = tonumber(h[2]) or 0
local prev = tonumber(h[3]) or 0
if w ~= win then
  if w == win - 1 then prev = cur else prev = 0 end
  cur = 0
end
local into = (now - win * period) / period
local before = prev * (1 - into) + cur
local allowed = before + cost <= limit + 1e-9
-- The count reported: with this request when it is counted; without it for
-- a peek (increment = 0), as django-ratelimit's increment=False reports it.
local count = before
if increment == 1 then count = before + cost end
if allowed and increment == 1 and cost > 0 then
  cur = cur + cost
  if w ~= win then
    redis.call('HSET', KEYS[1], 'w', win, 'c', cur, 'p', prev)
    -- Set once per window: written at or after the window's start, the key
    -- then lives to the end of the next window, where it is still needed as
    -- "prev". Later writes in the same window need no new expiry.
    redis.call('PEXPIRE', KEYS[1], math.ceil(period * 2000))
  else
    redis.call('HSET', KEYS[1], 'c', cur)  -- the window and "prev" are stored already
  end
end
local used = prev * (1 - into) + cur
local remaining = math.max(0, math.floor(limit - used + 1e-9))
local retry = 0
if not allowed then
  if cost > limit then
    retry = period
  elseif cur + cost <= limit then
    retry = (1 - (limit - cur - cost) / prev - into) * period
  else
    local need = 1
    if cur > 0 then need = math.max(0, 1 - (limit - cost) / cur) end
    retry = ((win + 1) * period - now) + need * period
  end
end
local reset = 0
if cur > 0 then
  reset = (win + 2) * period - now
elseif prev > 0 then
  reset = (win + 1) * period - now
end
return reply(allowed, math.ceil(count - 1e-9), remaining, retry, reset)
""",
    name="ratelimit-sliding",
)

#: GCRA (generic cell rate algorithm): one timestamp per key, the theoretical
#: arrival time. Requests are spaced period/limit apart, with a burst of up to
#: ``limit`` allowed.
GCRA = LuaScript(
    _NOW
    + """
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - period
local allowed = allow_at <= now + 1e-9
local after = tat
local retry = 0
if allowed then
  if increment == 1 and cost > 0 then
    after = new_tat
    redis.call('SET', KEYS[1], string.format('%.6f', new_tat),
               'PX', math.max(1, math.ceil((new_tat - now) * 1000)))
  end
else
  retry = allow_at - now
end
local remaining = math.max(0, math.floor((period - (after - now)) / interval + 1e-9))
local count = math.ceil((((increment == 1) and new_tat or tat) - now) / interval - 1e-9)
return reply(allowed, count, remaining, retry, after - now)
""",
    name="ratelimit-gcra",
)

#: Fixed window, as django-ratelimit does it: windows of ``period`` seconds,
#: staggered per key value by ARGV[5] (crc32(value) % period), and every
#: request counted, rejected ones included.
FIXED = LuaScript(
    _NOW
    + """
local offset = tonumber(rest)
local ts = math.floor(now)
local window = ts - (ts % period) + offset
-- A window ends strictly after now: at the second it would end, the next one is current.
if window <= ts then window = window + period end
local h = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = tonumber(h[2]) or 0
if tonumber(h[1]) ~= window then count = 0 end
if increment == 1 then
  local rolled = tonumber(h[1]) ~= window
  count = count + cost
  redis.call('HSET', KEYS[1], 'w', window, 'c', count)
  if rolled then redis.call('PEXPIREAT', KEYS[1], (window + 5) * 1000) end
end
-- As django-ratelimit: every request counted, limited once the count is over.
local allowed = count <= limit
return reply(allowed, count, math.max(0, limit - count),
             allowed and 0 or (window - now), window - now)
""",
    name="ratelimit-fixed",
)

SCRIPTS = {"sliding": SLIDING, "gcra": GCRA, "fixed": FIXED}
