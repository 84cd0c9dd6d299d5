"""Every quota window a request touches, checked and changed in one batch over limits' storage.

`limits` checks one window per call; a request touches up to a dozen (its token's and its
deployment's requests, tokens and budget, per minute, hour, day, month). This module reads and
writes the same counters under the same keys limits uses, in one storage round trip: for Redis
one Lua script registered through the storage's own client (here), for memory one lock over
the storage's counters (app.hooks.limits_memory). Three counter layouts, whose cost does not
grow with traffic: limits' fixed window (one counter) and sliding-window counter (this window's
and the last one's, the last weighted by how much of it the moving window still covers), and a
moving window counted in BUCKETS sub-window counters under limits' key for the window (limits'
own moving window keeps an entry per request: see Layout.MOVING).
tests/test_hooks_limits.py fails if limits changes the layouts relied on here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from limits.errors import StorageError
from limits.storage import Storage

# A moving window is counted in this many sub-window counters ("buckets"): a request is
# admitted only if the buckets that overlap the last window, with it, stay within the limit. So
# no span of one window ever holds more than the limit, at a cost that does not grow with
# traffic (two counters read per request: the current bucket and the older ones' summary), and
# room comes back at most one bucket (a window / 60: 1 s of a minute, 1 min of an hour) later
# than an exact log of every request would give it back.
BUCKETS = 60
# How far back a clock may step and still be held at the latest time seen by moving windows
# (the script's CLOCK_HOLD_MS, app.hooks.limits_memory.MemoryBatch._clock).
CLOCK_HOLD_SECONDS = 5.0

LUA = """
local FIXED, SLIDING, MOVING = 0, 1, 2
-- A moving window's sub-window counters (BUCKETS below).
local BUCKETS = @BUCKETS@
local CLOCK = '@CLOCK@'
local CLOCK_HOLD_MS = @CLOCK_HOLD_MS@
-- A summary is a double: it is kept only while exact (older buckets holding less than 2^47).
local SUMMED = 2 ^ 47
-- A counter is named by when it expires (server time, ms): windows are a minute apart at least,
-- so a few ms of rounding between two readings never mistakes one for another.
local SAME_MS = 5
local clock = redis.call('time')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)

-- The current counter's ms to live (-2: none), its window moved on as limits' sliding counter
-- does: once the current window has ended it becomes the previous one. Remembered per counter
-- (a settle carried here and the reservation often touch the same one) until `add` sets a
-- new time to live.
local ttls = {}
local function prepare(cur, prev, kind, exp)
  local known = ttls[cur]
  if known ~= nil then return known end
  local ttl = redis.call('pttl', cur)
  if kind ~= FIXED and ttl > 0 and ttl < exp then
    redis.call('rename', cur, prev)
    redis.call('set', cur, 0, 'PX', ttl + exp)
    ttl = ttl + exp
  end
  ttls[cur] = ttl
  return ttl
end

-- The previous counter's ms to live. It was the current one until its window ended: `prepare`
-- (as limits' own script) renamed it and set the new current one to live exactly one window
-- longer, so while the current one lives a window or more, the previous one lives that less a
-- window, with no call. Otherwise (the current one gone, evicted say) it is read.
local function previous_ttl(prev, exp, ct)
  if ct >= exp then return ct - exp end
  return redis.call('pttl', prev)
end

-- What the window counts, and ms until some of it frees (as limits' get_window_stats).
local function usage(cur, prev, kind, exp, ct)
  if kind == FIXED then
    local cc = tonumber(redis.call('get', cur)) or 0
    if ct < 0 then ct = exp end
    return cc, ct
  end
  -- Both counters in one call; MGET reads a key that is not a string (a moving-window list
  -- left by an older version) as missing, so such a list counts as nothing.
  local both = redis.call('mget', cur, prev)
  local cc, pc = tonumber(both[1]) or 0, tonumber(both[2]) or 0
  local pt = 0
  if pc > 0 then pt = math.max(0, previous_ttl(prev, exp, ct)) end
  if ct < 0 then ct = 0 end
  local reset = exp
  if pc > 0 then reset = math.min(reset, math.floor(pt % (exp / pc))) end
  if cc > 0 then reset = math.min(reset, ct % exp) end
  return math.floor(pc * pt / exp) + cc, reset
end

-- Add to the current counter; returns its name (expiry time, ms).
local function add(cur, kind, exp, amount, ct)
  if ct > 0 then
    redis.call('incrby', cur, amount)
    return now + ct
  end
  ttls[cur] = nil  -- a new counter, or a new time to live
  if kind == FIXED then
    redis.call('incrby', cur, amount)
    redis.call('pexpire', cur, exp)
    return now + exp
  end
  redis.call('set', cur, amount, 'PX', exp * 2)
  return now + exp * 2
end

local function adjust(cur, prev, kind, exp, delta, mark, ct)
  local target = nil
  if mark > 0 and ct > 0 and math.abs(now + ct - mark) <= SAME_MS then
    target = cur
  elseif kind ~= FIXED and mark > 0 then
    local pt = previous_ttl(prev, exp, ct)
    if pt > 0 and math.abs(now + pt - mark) <= SAME_MS then target = prev end
  end
  if target == nil then
    -- The reserved window has passed: only more than was reserved still counts.
    if delta > 0 then add(cur, kind, exp, delta, ct) end
    return
  end
  local left = redis.call('incrby', target, delta)
  if left < 0 then redis.call('set', target, 0, 'KEEPTTL') end
end

-- A moving window: bucket j counts what was taken from j * exp / BUCKETS (ms) on, for
-- exp / BUCKETS; it counts while it overlaps the last exp ms, so it expires at its end plus exp.
-- The current bucket and the BUCKETS before it cover every moment of the last window.
-- The moving windows' clock: Redis's, but not earlier than the latest one seen, by up to
-- CLOCK_HOLD_MS (a failover to a server whose clock is a little behind, a clock stepped back a
-- little). A summary of older buckets counts on buckets only moving forward: requests taken in
-- older buckets later would be missed. A clock found further behind is taken as it is: holding
-- it would freeze every moving window (full stays full) until real time caught up.
local moving_now = nil
local function clock_ms()
  if moving_now == nil then
    moving_now = now
    local last = tonumber(redis.call('get', CLOCK))
    if last ~= nil and last > now and last - now <= CLOCK_HOLD_MS then
      moving_now = last
    else
      -- (Its expiry is a time on the same clock: a clock stepped back keeps it longer.)
      redis.call('set', CLOCK, now, 'PX', 60000)
    end
  end
  return moving_now
end

local function bucket(exp)
  return math.floor(clock_ms() * BUCKETS / exp)
end

local function bucket_end(j, exp)
  return math.ceil((j + 1) * exp / BUCKETS + exp)
end

-- The summary of a moving window's older buckets, as app.hooks.limits_memory.summary writes
-- it: 1 + the oldest non-empty one's offset + (BUCKETS + 1) * what they hold (offset BUCKETS:
-- none), one number (kept only below SUMMED, where a double is exact).
local function summary(older, first)
  return string.format('%.0f', 1 + first + (BUCKETS + 1) * older)
end

-- `summary` read back: what the older buckets hold, the oldest's offset.
local function read_summary(code)
  local first = (code - 1) % (BUCKETS + 1)
  return (code - 1 - first) / (BUCKETS + 1), first
end

-- Add to the current bucket; returns its index (the reservation's mark).
local function moving_add(base, exp, amount)
  local i = bucket(exp)
  if amount > 0 then
    local key = base .. '/m' .. i
    if redis.call('incrby', key, amount) == amount then
      redis.call('pexpireat', key, bucket_end(i, exp))
    end
  end
  return i
end

-- A window an earlier build counted with limits' sliding-window counter under the same key (the
-- counters `base` and `base/-1`): what that counter holds now goes into the current bucket (so
-- it counts a whole window from now, never less than it would have), and the old counters go.
-- Looked at once a bucket, so what a process of the earlier build still draining settles there
-- comes in too. Returns the amount adopted.
local function adopt(base, exp)
  local ct = prepare(base, base .. '/-1', SLIDING, exp)
  local legacy = usage(base, base .. '/-1', SLIDING, exp, ct)
  redis.call('del', base, base .. '/-1')
  ttls[base] = nil
  if legacy > 0 then moving_add(base, exp, legacy) end
  return legacy
end

-- What a moving window holds: (used, ms until room frees). The buckets before the current one
-- change only when a settle reaches one of them (which drops their summary): they are read
-- once per bucket and kept summed in `base/s<bucket>` (see `summary`) until the bucket changes.
local function moving_usage(base, exp)
  local i = bucket(exp)
  local both = redis.call('mget', base .. '/m' .. i, base .. '/s' .. i)
  local current, code = tonumber(both[1]) or 0, tonumber(both[2]) or 0
  local older, first
  if code > 0 then
    older, first = read_summary(code)
  else
    local keys = {}
    for j = i - BUCKETS, i - 1 do keys[#keys + 1] = base .. '/m' .. j end
    local counts = redis.call('mget', unpack(keys))
    older, first = 0, BUCKETS
    for k = 1, BUCKETS do
      local c = tonumber(counts[k]) or 0
      if c > 0 then
        if older == 0 then first = k - 1 end
        older = older + c
      end
    end
    -- Once a bucket: what an earlier build (a host not yet upgraded) counted comes in.
    current = current + adopt(base, exp)
    if older < SUMMED then
      local lives = math.max(1, math.ceil((i + 1) * exp / BUCKETS - clock_ms()))
      redis.call('set', base .. '/s' .. i, summary(older, first), 'PX', lives)
    end
  end
  -- Room frees first when the oldest bucket with anything in it stops counting.
  local reset = exp
  if older > 0 then
    reset = bucket_end(i - BUCKETS + first, exp) - clock_ms()
  elseif current > 0 then
    reset = bucket_end(i, exp) - clock_ms()
  end
  return older + current, math.max(0, reset)
end

-- Settle on the bucket the reservation went to while it still counts (the older buckets'
-- summary follows it: see app.hooks.limits_memory.MemoryBatch._moving_adjust), else only more
-- than was reserved, on the current one.
local function moving_adjust(base, exp, delta, mark)
  local i = bucket(exp)
  if not (mark > 0 and mark >= i - BUCKETS and mark <= i) then
    if delta > 0 then moving_add(base, exp, delta) end
    return
  end
  local key = base .. '/m' .. mark
  local before = tonumber(redis.call('get', key)) or 0
  local after = math.max(0, before + delta)
  if after == 0 then
    redis.call('del', key)
  else
    local lives = math.max(1, bucket_end(mark, exp) - clock_ms())
    redis.call('set', key, string.format('%.0f', after), 'PX', lives)
  end
  if mark == i then return end  -- the current bucket: not in the summary
  local skey = base .. '/s' .. i
  local code = tonumber(redis.call('get', skey)) or 0
  if code <= 0 then return end  -- none yet: the next reading sums the buckets
  local older, first = read_summary(code)
  local offset = mark - (i - BUCKETS)
  if after == 0 and before > 0 and offset == first then
    -- The oldest bucket with anything emptied: the next reading finds the new oldest.
    redis.call('del', skey)
    return
  end
  if before == 0 and after > 0 and offset < first then first = offset end
  older = older + after - before
  if older >= SUMMED then
    redis.call('del', skey)
    return
  end
  redis.call('set', skey, summary(older, first), 'KEEPTTL')
end

-- What every kind does: the counters read, added to and adjusted.
local function change(key, kind, exp, delta, mark)
  if kind == MOVING then
    moving_adjust(key, exp, delta, mark)
    return
  end
  local ct = prepare(key, key .. '/-1', kind, exp)
  adjust(key, key .. '/-1', kind, exp, delta, mark, ct)
end

-- ARGV[1]: the arguments as one JSON array, decoded in C (splitting a string of words with a
-- Lua pattern cost about half a microsecond a word); the answer is one string of words.
local ARGS = cjson.decode(ARGV[1])
local op, n = ARGS[1], tonumber(ARGS[2])
local out = {}
if op == 'adjust' then
  for i = 1, n do
    local a = 3 + (i - 1) * 4
    local kind, exp = tonumber(ARGS[a]), tonumber(ARGS[a + 1]) * 1000
    change(KEYS[i], kind, exp, tonumber(ARGS[a + 2]), tonumber(ARGS[a + 3]))
  end
  return 0
end
if op == 'read' then
  for i = 1, n do
    local a = 3 + (i - 1) * 2
    local kind, exp = tonumber(ARGS[a]), tonumber(ARGS[a + 1]) * 1000
    local used, reset
    if kind == MOVING then
      used, reset = moving_usage(KEYS[i], exp)
    else
      local ct = prepare(KEYS[i], KEYS[i] .. '/-1', kind, exp)
      used, reset = usage(KEYS[i], KEYS[i] .. '/-1', kind, exp, ct)
    end
    out[#out + 1] = used
    out[#out + 1] = reset
  end
  return table.concat(out, ' ')
end
-- reserve: ARGS 3 required count, 4 choices, 5 now (ms), then per choice its window count and
-- its cooldown key (0: none), then per window kind, limit, expiry, amount, whether it is the
-- client's (1) or the deployment's (0). KEYS: each window's current counter (the previous one
-- is limits' name for it plus '/-1'), then the cooldown keys to read (open-until seconds,
-- failures).
-- (ARGS 5 is the caller's clock, which cooldowns are written in.)
local required, choices, wall = tonumber(ARGS[3]), tonumber(ARGS[4]), tonumber(ARGS[5])
local a = 6
local sizes, breakers = {}, {}
for c = 1, choices do
  sizes[c], breakers[c] = tonumber(ARGS[a]), tonumber(ARGS[a + 1])
  a = a + 2
end
-- Settles this one carries (earlier answers of the same process), applied before anything is
-- judged: their count, then each one's kind, expiry, delta, mark; their keys follow the windows'.
local carried = tonumber(ARGS[a])
a = a + 1
for j = 1, carried do
  local cexp = tonumber(ARGS[a + 1]) * 1000
  change(KEYS[n + j], tonumber(ARGS[a]), cexp, tonumber(ARGS[a + 2]), tonumber(ARGS[a + 3]))
  a = a + 4
end
local kind, limit, exp, amount, used, reset, client, ttl = {}, {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  kind[i], limit[i] = tonumber(ARGS[a]), tonumber(ARGS[a + 1])
  exp[i], amount[i] = tonumber(ARGS[a + 2]) * 1000, tonumber(ARGS[a + 3])
  client[i] = tonumber(ARGS[a + 4])
  a = a + 5
  if kind[i] == MOVING then
    used[i], reset[i] = moving_usage(KEYS[i], exp[i])
  else
    ttl[i] = prepare(KEYS[i], KEYS[i] .. '/-1', kind[i], exp[i])
    used[i], reset[i] = usage(KEYS[i], KEYS[i] .. '/-1', kind[i], exp[i], ttl[i])
  end
end
local cooldowns = {}
for k = n + carried + 1, #KEYS do
  local value = redis.call('get', KEYS[k])
  cooldowns[#cooldowns + 1] = value or '-'
end
local function refusing(first, last)
  for i = first, last do
    if used[i] + amount[i] > limit[i] then return i end
  end
  return 0
end
local refused, chosen, cooling = refusing(1, required), 0, 0
local verdicts = {}
if refused == 0 then
  local first = required + 1
  for c = 1, choices do
    local verdict = 0
    local b = breakers[c]
    if b > 0 and (tonumber(cooldowns[b]) or 0) * 1000 > wall then
      -- Cooling down: routing skips it, so it is not reserved.
      verdict = -1
      cooling = cooling + 1
    else
      verdict = refusing(first, first + sizes[c] - 1)
    end
    verdicts[c] = verdict
    if verdict == 0 then
      chosen = c
      break
    end
    first = first + sizes[c]
  end
end
local marks = {}
for i = 1, n do marks[i] = 0 end
-- No candidate fits, and not every one of them for a client window (a budget too small for
-- each): some deployment's own window or cooldown stands in the way, which frees sooner. The
-- client's windows are held all the same (routing then answers that no deployment has room).
local full = 0
if refused == 0 and choices > 0 and chosen == 0 then
  for c = 1, choices do
    local v = verdicts[c]
    if not (v > 0 and client[v] == 1) then full = 1 end
  end
end
local apply = refused == 0 and (choices == 0 or chosen > 0 or full == 1)
if apply then
  local function take(from, to)
    for i = from, to do
      if kind[i] == MOVING then
        marks[i] = moving_add(KEYS[i], exp[i], amount[i])
      else
        marks[i] = add(KEYS[i], kind[i], exp[i], amount[i], ttl[i])
      end
    end
  end
  take(1, required)
  local start = required + 1
  for c = 1, chosen - 1 do start = start + sizes[c] end
  if chosen > 0 then take(start, start + sizes[chosen] - 1) end
end
out[1], out[2], out[3] = refused, chosen, full
for c = 1, choices do out[#out + 1] = verdicts[c] or 0 end
for i = 1, n do
  out[#out + 1] = used[i]
  out[#out + 1] = reset[i]
  out[#out + 1] = marks[i]
end
for k = 1, #cooldowns do out[#out + 1] = cooldowns[k] end
return table.concat(out, ' ')
""".replace("@BUCKETS@", str(BUCKETS)).replace(
    "@CLOCK_HOLD_MS@", str(int(CLOCK_HOLD_SECONDS * 1000))
)


class AnswerLost(StorageError):
    """A command went out to Redis but its answer did not come within the socket timeout:
    Redis, alive but slow, may run it yet. Sent again, its changes could count twice, which
    would leave a window under its real use."""


# Lua numbers are doubles written with 14 significant digits: amounts stay below that. (More
# than 10**14 tokens, or 10**8 dollars in millionths, is refused anyway.)
MAX_AMOUNT = 10**14


class Layout(IntEnum):
    """How a window's counters are laid out in the storage."""

    FIXED = 0  # one counter that expires with its window
    SLIDING = 1  # limits' sliding-window counter: this window's counter and the last one's
    # A moving window: BUCKETS counters under limits' key for the window plus `/m<bucket>`,
    # bucket j counting from j * expiry / BUCKETS seconds (epoch) for expiry / BUCKETS. limits'
    # own moving window (a list of entries under the same key, up to the limit) costs a write
    # that grows with the limit; earlier versions counted it with the sliding counter.
    MOVING = 2


@dataclass(frozen=True)
class Window:
    """One limit's counters: limits' key for it (without the storage's prefix) and its size."""

    key: str
    layout: Layout
    limit: int
    expiry: int  # seconds
    client: bool = False  # a client token's window (not a deployment's)


@dataclass(frozen=True)
class Reading:
    """A window as read in a batch: what is used of it and when it next frees some room."""

    used: int
    reset_in: float  # seconds


@dataclass
class Reserved:
    """The result of one reservation batch.

    `refused` is the index of the required window that refused (or None); `chosen` the index of
    the choice taken (None when there were no choices or none fitted); `verdicts[c]` the index of
    the window that refused choice c, -1 if its deployment was cooling down, None if it fitted.
    `readings` and `marks` follow the flat window list (required first, then each choice's);
    a mark names the counter a reserved amount went to, so that settling finds it.
    """

    refused: int | None
    chosen: int | None
    verdicts: list[int | None]
    readings: list[Reading]
    marks: list[object]
    cooldowns: list[str | None] = field(default_factory=list)
    # No candidate had room, but only for its own windows or a cooldown: the required (client)
    # windows were held all the same, for routing to answer that no deployment has room.
    deployments_full: bool = False

    @property
    def admitted(self) -> bool:
        """Whether the reservation was taken (maybe without a deployment's part)."""
        return self.refused is None and (
            not self.verdicts or self.chosen is not None or self.deployments_full
        )


@dataclass(frozen=True)
class Change:
    """An amount to add to (or, negative, take from) the counter a reservation went to."""

    window: Window
    delta: int
    mark: object


class RedisBatch:
    """The batch as one Lua script through the limits Redis storage's own client.

    The script runs as a raw EVALSHA packed here (its keys' wire form cached) on connections
    borrowed once from the client's pool and kept: redis-py's generic path (argument encoding,
    the pool's checks on every borrow, its retry wrapper) cost more than the round trip itself.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.client = storage.get_connection()
        # The moving windows' clock key, under the storage's prefix (one per script text).
        clock = storage.prefixed_key("ai-proxy/moving-window-clock")
        self._script = self.client.register_script(LUA.replace("@CLOCK@", clock))
        self._names: dict[Window, str] = {}
        # id(window) -> the window, its key, its constant words (see _known)
        self._windows: dict[int, tuple[Window, str, tuple[str, str]]] = {}
        self._wire = _Wire(self.client, self._script)

    def script(self, keys: list, args: list):
        """Run the script; the client's errors become limits' StorageError, as the storage's
        own calls raise them."""
        return self.send_script(keys, args)()

    def send_script(self, keys: list, args: list) -> Callable[[], object]:
        """Send the script now; the call returned reads its answer (it must be called once).
        A failure to send is a StorageError; losing the answer once sent, AnswerLost."""
        errors = self.storage.base_exceptions
        try:
            answer = self._wire.send(keys, args)
        except errors as err:
            raise StorageError(err) from err

        def read() -> object:
            try:
                return answer()
            except self._wire.lost as err:
                raise AnswerLost(err) from err
            except errors as err:
                raise StorageError(err) from err

        return read

    def _key(self, window: Window) -> str:
        """The window's current counter as limits names it in Redis (the previous one, of a
        sliding window, is that name plus `/-1`)."""
        key = self._names.get(window)
        if key is None:
            storage = self.storage
            name = window.key
            if window.layout is not Layout.FIXED:
                name = storage._current_window_key(name)
                assert storage._previous_window_key(window.key) == name + "/-1"
            key = self._names[window] = storage.prefixed_key(name)
        return key

    def _run(self, keys: list[str], words: list[str]):
        """The script on `keys` with `words` (the operation's name, then numbers)."""
        return self._send(keys, words)()

    def _send(self, keys: list[str], words: list[str]) -> Callable[[], object]:
        return self.send_script(keys, [f'["{words[0]}",{",".join(words[1:])}]'])

    def reserve(self, *args, **kwargs) -> Reserved:
        """`send_reserve`, its answer read at once (the batches' common call)."""
        return self.send_reserve(*args, **kwargs)()

    def send_reserve(
        self,
        required: Sequence[tuple[Window, int]],
        choices: Sequence[Sequence[tuple[Window, int]]],
        choice_breakers: Sequence[int] = (),
        breaker_keys: Sequence[str] = (),
        carried: Sequence[Change] = (),
    ) -> Callable[[], Reserved]:
        """`reserve`, sent now; the call returned reads the answer (it must be called once).
        The request's thread does its other work meanwhile and seldom waits on Redis at all."""
        flat = [*required, *(pair for choice in choices for pair in choice)]
        known = [self._known(window) for window, _ in flat]
        keys = [key for key, _ in known]
        keys += [self._known(change.window)[0] for change in carried]
        keys += breaker_keys
        words = ["reserve", str(len(flat)), str(len(required)), str(len(choices))]
        words.append(str(int(time.time() * 1000)))
        for c, choice in enumerate(choices):
            words.append(f"{len(choice)},{choice_breakers[c] if choice_breakers else 0}")
        words.append(str(len(carried)))
        words += self._change_words(carried)
        for (_window, amount), (_, constant) in zip(flat, known, strict=True):
            words.append(f"{constant[0]},{min(int(amount), MAX_AMOUNT)},{constant[1]}")
        answer = self._send(keys, words)
        return lambda: _reserved(_words(answer()), len(flat), len(choices))

    def _known(self, window: Window) -> tuple[str, tuple[str, str]]:
        """A window's Redis key and its constant words in a reservation (layout, limit and
        expiry; whether it is the client's), worked out once per Window object."""
        entry = self._windows.get(id(window))
        if entry is not None and entry[0] is window:  # held here: its id is not reused
            return entry[1], entry[2]
        if len(self._windows) > 10_000:  # windows made per call (tools, tests): bounded
            self._windows.clear()
        constant = (
            f"{int(window.layout)},{min(window.limit, MAX_AMOUNT)},{window.expiry}",
            "1" if window.client else "0",
        )
        key = self._key(window)
        self._windows[id(window)] = (window, key, constant)
        return key, constant

    def adjust(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        keys = [self._known(change.window)[0] for change in changes]
        self._run(keys, ["adjust", str(len(changes)), *self._change_words(changes)])

    @staticmethod
    def _change_words(changes: Sequence[Change]) -> list[str]:
        words = []
        for change in changes:
            window = change.window
            delta = max(-MAX_AMOUNT, min(MAX_AMOUNT, int(change.delta)))
            words.append(f"{int(window.layout)},{window.expiry},{delta},{int(change.mark or 0)}")
        return words

    def read(self, windows: Sequence[Window]) -> list[Reading]:
        if not windows:
            return []
        keys = [self._key(window) for window in windows]
        words = ["read", str(len(windows))]
        for window in windows:
            words.append(f"{int(window.layout)},{window.expiry}")
        out = _words(self._run(keys, words))
        return [Reading(_int(out[2 * i]), _int(out[2 * i + 1]) / 1000) for i in range(len(windows))]


class _Wire:
    """EVALSHA of one script, packed by hand (its keys' wire form cached), on the connections
    of the client's own pool.

    With redis-py's plain ConnectionPool a connection is taken from and put back into the
    pool's lists directly: its get_connection probes the socket for stray data on every borrow
    (a system call), which a connection this module used never has, since it is put back only
    once its answer is read whole. Any other pool is used through its public calls. A
    connection that fails is disconnected and released as the client would. The script is
    loaded on NOSCRIPT, as redis-py's Script does.
    """

    def __init__(self, client, script) -> None:
        # redis is imported where a Redis storage is used: it costs a worker 8 MB and 0.1 s
        # to start (more where it finds OpenTelemetry installed) that memory storage never needs.
        from redis import ConnectionPool
        from redis.exceptions import NoScriptError, ResponseError
        from redis.exceptions import TimeoutError as TimedOut

        self._no_script, self._response_error = NoScriptError, ResponseError
        # What a read raises when the command went out and Redis, alive but slow, may run it
        # after all (a closed or reset connection is Redis gone: the command is sent again).
        self.lost = (TimedOut, TimeoutError)
        self.pool = client.connection_pool
        self.script = script
        self.sha = script.sha.encode()
        self._keys: dict[str, bytes] = {}  # a key in its wire form
        self._direct = type(self.pool) is ConnectionPool and all(
            hasattr(self.pool, name)
            for name in ("_checkpid", "_lock", "_available_connections", "_in_use_connections")
        )

    def send(self, keys: Sequence[str], args: Sequence[str]) -> Callable[[], object]:
        """Send EVALSHA now; the call returned reads its answer. It must be called, once: the
        connection stays out of the pool until then."""
        parts = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(keys) + len(args)), self._sha_part()]
        count = b"%d" % len(keys)
        parts.append(b"$%d\r\n%s\r\n" % (len(count), count))
        wire = self._keys
        for key in keys:
            part = wire.get(key)
            if part is None:
                data = key.encode()
                part = wire[key] = b"$%d\r\n%s\r\n" % (len(data), data)
            parts.append(part)
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        packed = b"".join(parts)
        read = self._send(packed)

        def answer() -> object:
            try:
                return read()
            except self._no_script:
                # Not loaded (a restarted or flushed server): load it and run it again.
                self._send(_pack(b"SCRIPT", b"LOAD", self.script.script.encode()))()
                return self._send(packed)()

        return answer

    def _sha_part(self) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(self.sha), self.sha)

    def _send(self, packed: bytes) -> Callable[[], object]:
        """Send one packed command; the call returned reads its answer and gives the
        connection back (a failed one is dropped)."""
        connection = self._borrow()
        try:
            connection.send_packed_command([packed], check_health=False)
        except BaseException:
            self._drop(connection)
            raise

        def read() -> object:
            try:
                answer = connection.read_response()
            except self._response_error:
                self._give_back(connection)  # the answer was read whole: the connection is fine
                raise
            except BaseException:
                self._drop(connection)
                raise
            self._give_back(connection)
            return answer

        return read

    def _drop(self, connection) -> None:
        connection.disconnect()
        self.pool.release(connection)

    def _borrow(self):
        pool = self.pool
        if self._direct:
            pool._checkpid()  # a forked child starts afresh, as the pool's own calls do
            with pool._lock:
                if pool._available_connections:
                    connection = pool._available_connections.pop()
                    pool._in_use_connections.add(connection)
                    return connection
        return pool.get_connection()

    def _give_back(self, connection) -> None:
        pool = self.pool
        reconnect = getattr(connection, "should_reconnect", None)
        if (
            self._direct
            and getattr(connection, "pid", None) == pool.pid == os.getpid()
            and not (reconnect is not None and reconnect())
        ):
            with pool._lock:
                if connection in pool._in_use_connections:
                    pool._in_use_connections.remove(connection)
                    pool._available_connections.append(connection)
                    return
        pool.release(connection)


def _pack(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    out += [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    return b"".join(out)


def _words(answer: object) -> list[str]:
    if isinstance(answer, bytes):
        answer = answer.decode()
    return str(answer).split()


def _reserved(out: list[str], windows: int, choices: int) -> Reserved:
    """The reservation script's answer: its words, for `windows` windows and `choices` choices."""
    refused, chosen, full = _int(out[0]), _int(out[1]), out[2] == "1"
    verdicts = [_int(v) for v in out[3 : 3 + choices]]
    rest = out[3 + choices :]
    readings, marks = [], []
    for i in range(windows):
        used, reset, mark = rest[3 * i : 3 * i + 3]
        readings.append(Reading(_int(used), _int(reset) / 1000))
        marks.append(_int(mark))
    cooldowns = [_text(v) for v in rest[3 * windows :]]
    return Reserved(
        refused - 1 if refused else None,
        chosen - 1 if chosen else None,
        [None if v == 0 else (-1 if v < 0 else v - 1) for v in verdicts],
        readings,
        marks,
        cooldowns,
        full,
    )


def _int(word: str) -> int:
    """A number the script wrote (Lua writes every number as a double: `12`, or `1.5e+14`)."""
    try:
        return int(word)
    except ValueError:
        return int(float(word))


def _text(value: str) -> str | None:
    return None if value == "-" else value
