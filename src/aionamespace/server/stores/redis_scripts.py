"""The Redis store's Lua: one script for every operation on a namespace, two for the board.

**Rounds.** An ``incr`` or a ``cas`` whose write is conditional (redis_calls.py) may have to
try again; the calls after it on its namespace are sent in the same pipeline anyway, with the
round's *token*: if the conditional write did not happen it marks the namespace (``m``'s
field blk), and the calls carrying that token answer "skipped" without running, to be sent
again after it. So a batch is one round trip unless a conditional write fails.

**One script, not one per operation.** Every call of a batch that writes is ``EVALSHA`` of
``NAMESPACE`` with the operation as its first argument (a plain get or snapshot is mostly
read without it, redis_rounds.py): a node either knows the script or does not, so after
a restart or a failover every call to that node fails with NOSCRIPT alike (nothing ran), and
the store loads it and sends them again in their order (redis.py).

**A namespace's keys** share the hash tag of ``KEYS[1]`` (its *base*, redis.py), so they live
in one cluster slot and one script call touches them all::

    base:m  hash   r: revision, hb: the history's size (base.py's rules), summed, n: names set
    base:v  hash   name -> encoded value, or "" for a list that appends grew; and once the
                   namespace placed 32 names, "" -> 65 bytes of padding, no name: it makes
                   Redis keep the hash as a hash table (``grown`` in the script says why)
    base:o  hash   name -> when it was set first (m's counter n): a snapshot lists names in
                   that order, as a Python dict (the in-memory store) does
    base:l  hash   "c"+name -> such a list's length, "r"+name -> the revision of its last append
    base:b:NAME    string: such a list's elements (its encoding without the array header)
    base:h  stream one entry per revision kept, id "<revision>-1", field c: the changes,
                   msgpack [op, name, value, ...]: op "s" set, "d" deleted, "a" appended
                   (value "<length> <elements' bytes>": the list as of that revision);
                   an update's ["u", name, value, name, value, ...]: all of them set
    base:s  list   the size of each revision kept, oldest first, with the names of the lists
                   it replaced that the history still replays (kept as base:x:REV:NAME)
    base:c  shard channel: every revision is published on it (redis_follow.py), and a drop

A list that appends grew keeps its elements in a string of its own, so an append is an
``APPEND`` of the items (it costs what it adds, as in memory) and each revision of the list is
a prefix of those bytes: a replay reads the prefix. When the list is replaced while the history
still holds one of its appends, its string is renamed (not copied) to ``base:x:REV:NAME`` and
counted in that revision's size, as base.py says; it goes when that revision leaves the history.
"""

from __future__ import annotations

from ...protocol.codec import MARKER_CODES
from ...protocol.lists import MAX_LIST_LENGTH
from .base import CHANGE_OVERHEAD_BYTES
from .redis_script_ops import OPERATIONS

__all__ = [
    "BOARD_START",
    "LAYOUT_VERSION",
    "MAX_INLINE_BYTES",
    "NAMESPACE",
    "RESERVE",
]

#: The version of the key layout above (and of what the script publishes: a server that does
#: not publish its revisions would leave the others' followers behind); a store refuses a
#: board of another. 3: an update's history entry (and message) is ["u", name, value, ...],
#: which a server of layout 2 would read three by three, wrongly.
LAYOUT_VERSION = "3"
#: A revision's changes ride in its message up to this size (packed); beyond, or for an
#: append, a follower fetches them from the history (redis_follow.py).
MAX_INLINE_BYTES = 8192

_NAMESPACE = r"""
local B = KEYS[1]
local M, V, L, H, S, O = B .. ':m', B .. ':v', B .. ':l', B .. ':h', B .. ':s', B .. ':o'
local MAXREV, MAXBYTES = tonumber(ARGV[2]), tonumber(ARGV[3])
local MAY_CREATE, WANT_LIST = ARGV[4] == '1', ARGV[5] == '1'
local TOKEN, BLOCKS = ARGV[6], ARGV[7] == '1'
-- the most frequent call, before the rest of the script is defined (which each call costs): a
-- get of a value that is no list (a list's, or a get in a blocked round, goes the whole way)
if ARGV[1] == 'get' and TOKEN == '' and ARGV[9] ~= '' then
  local v = redis.call('HGET', V, ARGV[9])
  if v ~= '' then
    local rev = tonumber(redis.call('HGET', M, 'r') or 0)
    if v then return {0, {'ok', v, rev}} end
    return {0, {'missing', rev}}
  end
end
-- and a snapshot of up to a thousand names none of which is a list
if ARGV[1] == 'snapshot' and TOKEN == '' and ARGV[9] == '-' and #ARGV >= 10
    and #ARGV <= 1009 then
  if redis.call('EXISTS', M) == 0 then return {0, {'ok', 0, {}}} end
  local values, plain = redis.call('HMGET', V, unpack(ARGV, 10)), true
  for i = 1, #values do
    if values[i] == '' or ARGV[i + 9] == '' then plain = false break end
  end
  if plain then return {0, {'ok', tonumber(redis.call('HGET', M, 'r') or 0), values}} end
end
local EPOCH, CHANNEL = ARGV[8], B .. ':c'
local OVERHEAD, MAX_LIST, MAX_INLINE = @OVERHEAD@, @MAX_LIST@, @MAX_INLINE@
local created = 0

local function ensure()
  if redis.call('EXISTS', M) == 1 then return true end
  if not MAY_CREATE then return false end
  redis.call('HSET', M, 'r', 0, 'hb', 0)
  created = 1
  return true
end

local function revision() return tonumber(redis.call('HGET', M, 'r') or 0) end
local function body_key(name) return B .. ':b:' .. name end
local function retired_key(rev, name) return B .. ':x:' .. rev .. ':' .. name end

-- once LARGE names were placed in a namespace, its values hash gets the field "" (never a
-- name) with a value too long for a listpack: Redis then keeps the hash as a hash table, where
-- reading or writing a field costs the same whatever the hash holds, not a scan of the
-- listpack (an HMGET of each name of a hundred scans a hundred times)
local LARGE, PAD = 32, string.rep('-', 65)
local function grown(before, after)
  if before < LARGE and after >= LARGE then redis.call('HSET', V, '', PAD) end
end

-- a name set for the first time comes after the others (a snapshot lists them in that order)
local function placed(name)
  local n = redis.call('HINCRBY', M, 'n', 1)
  redis.call('HSET', O, name, n)
  grown(n - 1, n)
end

-- tell the followers (redis_follow.py): "EPOCH REV FLAG [CHANGES]", FLAG "n" if this call
-- made the namespace, CHANGES the history entry's if inline and small, REV 0 if dropped
local function publish(rev, packed)
  local message = EPOCH .. ' ' .. rev .. ' ' .. (created == 1 and 'n' or '-')
  if packed and #packed <= MAX_INLINE then message = message .. ' ' .. packed end
  redis.call('SPUBLISH', CHANNEL, message)
end

-- count revision rev (already applied) into the history, then forget what the bounds require;
-- publish it, with its changes unless inline is false (an append's list is not in them);
-- packed: the changes as the caller packed them (then fields is not read)
local function record(rev, fields, size, retired, inline, packed)
  packed = packed or cmsgpack.pack(fields)
  redis.call('XADD', H, rev .. '-1', 'c', packed)
  publish(rev, inline and packed)
  local entry = tostring(size)
  if retired then entry = entry .. ' ' .. cmsgpack.pack(retired) end
  local n = redis.call('RPUSH', S, entry)
  local hb = tonumber(redis.call('HGET', M, 'hb')) + size
  local first = rev - n + 1
  local trimmed = false
  while n > 0 and (n > MAXREV or hb > MAXBYTES) do
    local e = redis.call('LPOP', S)
    local space = string.find(e, ' ', 1, true)
    if space then
      hb = hb - tonumber(string.sub(e, 1, space - 1))
      for _, name in ipairs(cmsgpack.unpack(string.sub(e, space + 1))) do
        redis.call('DEL', retired_key(first, name))
      end
    else
      hb = hb - tonumber(e)
    end
    first, n, trimmed = first + 1, n - 1, true
  end
  if trimmed then redis.call('XTRIM', H, 'MINID', first .. '-0') end
  redis.call('HSET', M, 'r', rev, 'hb', hb)
end

-- set the names of flat[first..last] (name, value, ...: all distinct) in one HSET, straight
-- from the table given, and place the new ones, in their order, in one HSET (the first
-- HSET's count says how many are new; when some but not all, one HMGET of the order hash says
-- which): a command per name costs Redis more than its work, and so does copying the pairs
local function set_all(flat, first, last)
  local added = 0
  for at = first, last, 2000 do  -- (unpack's stack is bounded)
    added = added + redis.call('HSET', V, unpack(flat, at, math.min(at + 1999, last)))
  end
  if added == 0 then return end
  local names, new = {}, {}
  for i = first, last, 2 do names[#names + 1] = flat[i] end
  if added < #names then
    for at = 1, #names, 1000 do
      local stop = math.min(at + 999, #names)
      local known = redis.call('HMGET', O, unpack(names, at, stop))
      for i = at, stop do
        if not known[i - at + 1] then new[#new + 1] = names[i] end
      end
    end
  else
    new = names
  end
  local n = redis.call('HINCRBY', M, 'n', #new) - #new
  local order = {}
  for i, name in ipairs(new) do order[2 * i - 1], order[2 * i] = name, n + i end
  for at = 1, #order, 2000 do
    redis.call('HSET', O, unpack(order, at, math.min(at + 1999, #order)))
  end
  grown(n, n + #new)
end

-- name, set or deleted in revision rev, held a list that appends grew: its string goes, or
-- is kept for the history (base:x:REV:NAME) while the history replays one of its appends.
-- Returns the revision's size and its retired names (nil while none), with this one's.
local oldest = nil
local function unlist(name, rev, size, retired)
  local last = redis.call('HGET', L, 'r' .. name)
  if not last then return size, retired end
  redis.call('HDEL', L, 'c' .. name, 'r' .. name)
  oldest = oldest or (rev - redis.call('LLEN', S))
  if tonumber(last) >= oldest then
    size = size + redis.call('STRLEN', body_key(name))
    redis.call('RENAME', body_key(name), retired_key(rev, name))
    retired = retired or {}
    retired[#retired + 1] = name
    return size, retired
  end
  redis.call('DEL', body_key(name))
  return size, retired
end

-- set (value) or delete (false) names as one revision of size bytes (plus replaced lists)
local function commit(names, values, size)
  local rev = revision() + 1
  local fields, retired = {}, nil
  local lists = redis.call('HLEN', L) > 0
  for i, name in ipairs(names) do
    local v = values[i]
    if lists then size, retired = unlist(name, rev, size, retired) end
    local at = #fields
    if v then
      if redis.call('HSET', V, name, v) == 1 then placed(name) end
      fields[at + 1], fields[at + 2], fields[at + 3] = 's', name, v
    else
      redis.call('HDEL', V, name)
      redis.call('HDEL', O, name)
      fields[at + 1], fields[at + 2], fields[at + 3] = 'd', name, ''
    end
  end
  record(rev, fields, size, retired, true)
  return rev
end

-- packed: the revision's changes as the caller packed them, msgpack ['u', name, value, ...]
-- (distinct names; packing them here would cost Redis more than the rest of the call): the
-- history entry as it is, and the names and values read from it, one string each, as ARGV
-- would hold them had they come as arguments, and set from that table
local function update(packed)
  if not ensure() then return {'full'} end
  local flat = cmsgpack.unpack(packed)
  local last = #flat
  if last == 1 then return {'ok', revision()} end
  local rev, size, retired = revision() + 1, 0, nil
  local lists = redis.call('HLEN', L) > 0
  for i = 2, last, 2 do
    size = size + #flat[i + 1] + OVERHEAD
    if lists then size, retired = unlist(flat[i], rev, size, retired) end
  end
  set_all(flat, 2, last)
  record(rev, nil, size, retired, true, packed)
  return {'ok', rev}
end

if TOKEN ~= '' and redis.call('HGET', M, 'blk') == TOKEN then return {0, {'skipped'}} end
-- the most frequent writes, before the rest of the script is defined (each call costs Redis
-- what it defines: the other operations' closures and tables): a set or an update ends here
if ARGV[1] == 'update' or ARGV[1] == 'set' then
  local reply  -- (before reading created, which the op may set)
  if ARGV[1] == 'update' then
    reply = update(ARGV[9])
  elseif not ensure() then
    reply = {'full'}
  else
    reply = {'ok', commit({ARGV[9]}, {ARGV[10]}, #ARGV[10] + OVERHEAD)}
  end
  return {created, reply}
end

local MARKERS = {@MARKERS@}
local ZERO_EXT = {[199] = 1, [200] = 2, [201] = 4}

local function header(n)
  if n < 16 then return string.char(144 + n) end
  if n < 65536 then return string.char(220, math.floor(n / 256), n % 256) end
  return string.char(221, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end

-- protocol/lists.py's split_list: (length, header bytes), or nil if not a list
local function split(s)
  local b, count, hl = string.byte(s, 1), nil, nil
  if b >= 144 and b <= 159 then count, hl = b - 144, 1
  elseif b == 220 then count, hl = string.byte(s, 2) * 256 + string.byte(s, 3), 3
  elseif b == 221 then
    local b1, b2, b3, b4 = string.byte(s, 2, 5)
    count, hl = ((b1 * 256 + b2) * 256 + b3) * 256 + b4, 5
  else return nil end
  if count > 0 then
    local at = hl + 1
    local width = ZERO_EXT[string.byte(s, at)]
    if width and string.sub(s, at + 1, at + width) == string.rep('\0', width)
        and MARKERS[string.byte(s, at + width + 1)] then
      return nil
    end
  end
  return count, hl
end

local function value(name)
  if name == '' then return false end  -- (the padding of grown; the server refuses the name)
  local v = redis.call('HGET', V, name)
  if v == false or v ~= '' then return v end
  local count = tonumber(redis.call('HGET', L, 'c' .. name))
  return header(count) .. (redis.call('GET', body_key(name)) or '')
end

"""

#: Every operation on one namespace: KEYS[1] its base; ARGV: op, max_history_revisions,
#: max_history_bytes, may create it (1/0), want an appended list whole (1/0), the round's
#: token (or ""), blocks the token if it does not write (1/0: a ``cond``), the caller's epoch
#: (published with each revision), the op's args.
#: Returns {created (1/0), the op's reply}; {0, {"skipped"}} if the token is blocked.
NAMESPACE = (
    (_NAMESPACE + OPERATIONS)
    .replace("@OVERHEAD@", str(CHANGE_OVERHEAD_BYTES))
    .replace("@MAX_LIST@", str(MAX_LIST_LENGTH))
    .replace("@MAX_INLINE@", str(MAX_INLINE_BYTES))
    .replace("@MARKERS@", ", ".join(f"[{int(code)}] = true" for code in sorted(MARKER_CODES)))
)

#: Register namespaces (ARGV[2:]) in the board's registry KEYS[1] if it holds fewer than
#: ARGV[1] (-1: no bound) or holds them already: 1 for each registered, 0 for each refused.
RESERVE = r"""
local bound, out = tonumber(ARGV[1]), {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then out[#out + 1] = 1
  elseif bound < 0 or redis.call('SCARD', KEYS[1]) < bound then
    redis.call('SADD', KEYS[1], ARGV[i])
    out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
"""

#: The board's layout version KEYS[1] and epoch KEYS[2], made (ARGV[1], ARGV[2]) if missing.
BOARD_START = r"""
local layout = redis.call('GET', KEYS[1])
if layout == false then
  redis.call('SET', KEYS[1], ARGV[1])
  layout = ARGV[1]
end
if layout ~= ARGV[1] then return {layout, false} end
local epoch = redis.call('GET', KEYS[2])
if epoch == false then
  redis.call('SET', KEYS[2], ARGV[2])
  epoch = ARGV[2]
end
return {layout, epoch}
"""

#: The board's epoch KEYS[1] replaced by ARGV[2] if it is still ARGV[1] (or gone), so that of
#: the servers that find the same loss, the first makes the new epoch and the others take it.
RENEW_EPOCH = r"""
local epoch = redis.call('GET', KEYS[1])
if epoch == false or epoch == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""
