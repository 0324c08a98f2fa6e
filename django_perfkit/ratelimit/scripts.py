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

#: Sliding window, counted in tenths of the period: one count per tenth, in one
#: hash. A request is allowed if the counts of every tenth that overlaps the
#: last ``period`` seconds, plus its cost, stay within the limit. Counting the
#: oldest tenth whole (instead of estimating how much of it is still inside,
#: as a two-window counter does) makes the limit a hard cap: no span of
#: ``period`` seconds ever lets more than ``limit`` through, however the
#: requests are timed. The price: a request is counted for up to a tenth of a
#: period longer than it strictly has to be. Rejected requests are not
#: counted, so a client that keeps hammering is let back in as the window
#: slides. Tenths that left the window are deleted when the key is next used;
#: the key expires a period and a tenth after its newest count.
SLIDING = LuaScript(
    _NOW
    + """
local tenths = 10
local size = period / tenths
local cur = math.floor(now / size)
-- The oldest tenth that still overlaps (now - period, now]: cur - tenths.
local oldest = cur - tenths
local h = redis.call('HGETALL', KEYS[1])
local used = 0
local newest = nil
local counted = {}
local counts = {}
local stale = nil
for i = 1, #h, 2 do
  local b = tonumber(h[i])
  if not b or b < oldest then  -- left the window (or not a tenth: an older format)
    if not stale then stale = {} end
    stale[#stale + 1] = h[i]
  else
    local c = tonumber(h[i + 1])
    used = used + c
    counted[#counted + 1] = b
    counts[b] = c
    if not newest or b > newest then newest = b end
  end
end
if stale then redis.call('HDEL', KEYS[1], unpack(stale)) end
local allowed = used + cost <= limit
-- The count reported: with this request when it is counted; without it for
-- a peek (increment = 0), as django-ratelimit's increment=False reports it.
local count = used
if increment == 1 then count = used + cost end
if allowed and increment == 1 and cost > 0 then
  if redis.call('HINCRBY', KEYS[1], string.format('%d', cur), cost) == cost then
    -- A new tenth: the key must outlive it by a period.
    redis.call('PEXPIRE', KEYS[1], math.ceil((period + size) * 1000))
  end
  used = used + cost
  newest = cur
end
local remaining = math.max(0, limit - used)
-- Tenth b stops overlapping the window at (b + 1 + tenths) * size.
local retry = 0
if not allowed then
  if cost > limit then
    retry = period
  else
    table.sort(counted)
    local need = used + cost - limit
    local freed = 0
    for _, b in ipairs(counted) do
      freed = freed + counts[b]
      if freed >= need then
        retry = (b + 1 + tenths) * size - now
        break
      end
    end
  end
end
local reset = 0
if newest and used > 0 then reset = (newest + 1 + tenths) * size - now end
return reply(allowed, count, remaining, retry, reset)
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
