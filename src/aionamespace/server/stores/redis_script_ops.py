"""The namespace script's operations (redis_scripts.py has the script's keys, helpers and
commits, which these call): one Lua function per operation of ``RedisStore.apply`` but the
two the script runs before it defines these (set and update), and the dispatch that runs the
one a call names.

Each takes the operation's own arguments (``ARGV[9:]``) and returns its reply: a status
(``ok``, ``missing``, ``full``, ...) and what the operation answers (redis_calls.py reads it).
"""

from __future__ import annotations

__all__ = ["OPERATIONS"]

#: The end of the namespace script: its operations, then the dispatch.
OPERATIONS = r"""
local ops = {}

function ops.get(a)
  local v = value(a[1])
  if not v then return {'missing', revision()} end
  return {'ok', v, revision()}
end

function ops.del(a)
  if redis.call('HEXISTS', V, a[1]) == 0 then return {'missing'} end
  return {'ok', commit({a[1]}, {false}, OVERHEAD)}
end

function ops.pop(a)
  local v = value(a[1])
  if not v then return {'missing'} end
  return {'ok', v, commit({a[1]}, {false}, OVERHEAD)}
end

function ops.open(a)
  if not ensure() then return {'full'} end
  local names, values, size = {}, {}, 0
  for i = 1, #a, 2 do
    if redis.call('HEXISTS', V, a[i]) == 0 then
      names[#names + 1], values[#values + 1] = a[i], a[i + 1]
      size = size + #a[i + 1] + OVERHEAD
    end
  end
  if #names == 0 then return {'ok', 0, names} end
  return {'ok', commit(names, values, size), names}
end

function ops.setdefault(a)
  if not ensure() then return {'full'} end
  local v = value(a[1])
  if v then return {'ok', v} end
  return {'set', commit({a[1]}, {a[2]}, #a[2] + OVERHEAD)}
end

function ops.snapshot(a)
  if redis.call('EXISTS', M) == 0 then return {'ok', 0, {}} end
  local out = {}
  if a[1] == '*' then
    local all, order, named = redis.call('HGETALL', V), redis.call('HGETALL', O), {}
    for i = 1, #order, 2 do named[#named + 1] = {tonumber(order[i + 1]), order[i]} end
    table.sort(named, function(x, y) return x[1] < y[1] end)
    local values = {}
    for i = 1, #all, 2 do values[all[i]] = all[i + 1] end
    for _, pair in ipairs(named) do
      local v = values[pair[2]]
      if v == '' then v = value(pair[2]) end
      out[#out + 1], out[#out + 2] = pair[2], v
    end
    return {'ok', revision(), out}
  end
  -- the names asked for: their values in their order, false (nil) for those missing
  for first = 2, #a, 1000 do  -- one HMGET per thousand names (unpack's stack is bounded)
    local last = math.min(first + 999, #a)
    local values = redis.call('HMGET', V, unpack(a, first, last))
    if first == 2 and last == #a then out = values end  -- (most snapshots: no copy)
    for i = first, last do
      local v = values[i - first + 1]
      if v == '' then v = value(a[i]) elseif a[i] == '' then v = false end
      out[i - 1] = v
    end
  end
  return {'ok', revision(), out}
end

-- set a[1] to a[4] if it holds what the caller read: a[2] 'm' (missing), 'v' (the bytes a[3]),
-- 'l' (the list whose last append was revision a[3]), 'u' (unknown: never); else say what it
-- holds (a list's bytes only if a[5] == '1'), and block the round's token: the calls after
-- this one on the namespace, sent in the same pipeline, must wait for its next attempt
function ops.cond(a)
  if not ensure() then return {'full'} end
  local name, kind, expected = a[1], a[2], a[3]
  local current = redis.call('HGET', V, name)
  local token = nil
  if current == '' then token = redis.call('HGET', L, 'r' .. name) end
  if (current == false and kind == 'm') or (token and kind == 'l' and token == expected)
      or (current and not token and kind == 'v' and current == expected) then
    return {'ok', commit({name}, {a[4]}, #a[4] + OVERHEAD)}
  end
  if BLOCKS then redis.call('HSET', M, 'blk', TOKEN) end
  if current == false then return {'m'} end
  if token then
    if a[5] == '1' then return {'l', token, value(name)} end
    return {'l', token}
  end
  return {'v', current}
end

-- append the items a[3] (a[2] of them) to the list a[1]
function ops.append(a)
  if not ensure() then return {'full'} end
  local name, n, items = a[1], tonumber(a[2]), a[3]
  local current = redis.call('HGET', V, name)
  local body, count = body_key(name), nil
  if current == '' then
    count = tonumber(redis.call('HGET', L, 'c' .. name))
    if count + n > MAX_LIST then return {'toolong'} end
  else
    local encoded = current or '\144'
    local hl
    count, hl = split(encoded)
    if count == nil then return {'notlist', encoded} end
    if count + n > MAX_LIST then return {'toolong'} end
    redis.call('SET', body, string.sub(encoded, hl + 1))
    redis.call('HSET', V, name, '')
    if current == false then placed(name) end
  end
  local rev = revision() + 1
  local size = redis.call('APPEND', body, items)
  count = count + n
  redis.call('HSET', L, 'c' .. name, count, 'r' .. name, rev)
  record(rev, {'a', name, count .. ' ' .. size}, #items + OVERHEAD, nil, false)
  if WANT_LIST then return {'ok', count, rev, header(count) .. redis.call('GET', body)} end
  return {'ok', count, rev, size}
end

-- the changes after revision a[1], and the elements of every list they append to
function ops.history(a)
  local since, rev = tonumber(a[1]), revision()
  local oldest = rev - redis.call('LLEN', S) + 1
  if since > rev or (since < rev and since < oldest - 1) then
    return {'expired', rev, oldest}
  end
  if since == rev then return {'ok', {}, {}, rev} end
  local entries = redis.call('XRANGE', H, (since + 1) .. '-0', '+')
  local pending, bodies = {}, {}
  -- name appended to (op 'a'), or replaced at revision at: the list it replaced, retired then
  local function changed(op, name, at)
    if op == 'a' then
      pending[name] = true
    elseif pending[name] then
      pending[name] = nil
      local n = #bodies
      bodies[n + 1], bodies[n + 2] = at, name
      bodies[n + 3] = redis.call('GET', retired_key(at, name)) or ''
    end
  end
  for _, entry in ipairs(entries) do
    local at = tonumber(string.match(entry[1], '^(%d+)'))
    local fields = cmsgpack.unpack(entry[2][2])
    if fields[1] == 'u' then  -- (an update's: name, value, ..., every one set)
      for i = 2, #fields, 2 do changed('s', fields[i], at) end
    else
      for i = 1, #fields, 3 do changed(fields[i], fields[i + 1], at) end
    end
  end
  for name in pairs(pending) do
    local n = #bodies
    bodies[n + 1], bodies[n + 2], bodies[n + 3] = 0, name, redis.call('GET', body_key(name)) or ''
  end
  return {'ok', entries, bodies, rev}
end

function ops.drop(a)
  local sizes = redis.call('LRANGE', S, 0, -1)
  local first = revision() - #sizes + 1
  for i, e in ipairs(sizes) do
    local space = string.find(e, ' ', 1, true)
    if space then
      for _, name in ipairs(cmsgpack.unpack(string.sub(e, space + 1))) do
        redis.call('DEL', retired_key(first + i - 1, name))
      end
    end
  end
  for _, field in ipairs(redis.call('HKEYS', L)) do
    if string.sub(field, 1, 1) == 'c' then redis.call('DEL', body_key(string.sub(field, 2))) end
  end
  redis.call('DEL', M, V, L, H, S, O)
  publish(0, false)
  return {'ok'}
end

function ops.usage(a)
  if redis.call('EXISTS', M) == 0 then return {'ok', 0, 0, 0, 0, 0} end
  local all, bytes, names = redis.call('HGETALL', V), 0, 0
  for i = 2, #all, 2 do
    local name = all[i - 1]
    if name == '' then  -- (not a name: see grown)
    elseif all[i] == '' then
      names = names + 1
      bytes = bytes + #header(tonumber(redis.call('HGET', L, 'c' .. name)))
        + redis.call('STRLEN', body_key(name))
    else
      names, bytes = names + 1, bytes + #all[i]
    end
  end
  return {'ok', 1, names, bytes, redis.call('LLEN', S), tonumber(redis.call('HGET', M, 'hb'))}
end

local args = {}
for i = 9, #ARGV do args[i - 8] = ARGV[i] end
local reply = ops[ARGV[1]](args)  -- (before reading created, which the op may set)
return {created, reply}
"""
