"""The Lua scripts of the ``redis`` backend: each one round trip, atomic on the server.

The key layout is in :mod:`app.threads._redis`; the scripts get their keys as ``KEYS``
where they are known in advance and build the rest (threads found in a sorted set)
from the prefix the same way. Stream fields, in this order: ``k`` kind, ``r`` run id,
``c`` client id, ``x`` text, ``a`` at; so in a message's flat field list ``[2]`` is
the kind, ``[4]`` the run, ``[6]`` the client id, ``[8]`` the text, ``[10]`` the time.
Numbers leave a script as strings (Lua would truncate floats to integers).
"""

from __future__ import annotations

from typing import Final

from ._backend import TERMINAL_KINDS

__all__ = ["APPEND", "CLAIM", "EPOCH", "HEAD", "PRUNE", "RELEASE", "THREADS"]

_TERMINAL: Final = ", ".join(f"[{kind!r}] = true" for kind in sorted(TERMINAL_KINDS))

_HELPERS: Final = r"""
local TERMINAL = {{TERMINAL_KINDS}}

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function id_of(seq)
  return string.format('%d-0', seq)
end

-- HSET / HDEL a long flat list in slices: unpack() is bounded by Lua's C stack.
local function hset(key, flat)
  for i = 1, #flat, 1000 do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat)))
  end
end

local function hdel(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- The other live worker that owns a thread (owner key o), or false.
local function holder(o, me, workers)
  local owner = redis.call('GET', o)
  if owner and owner ~= me and redis.call('EXISTS', workers .. owner) == 1 then
    return owner
  end
  return false
end

-- Where a thread stands: {last_seq, first id or '', client ids (flat), open runs (flat)}.
local function head(m, s, c, r)
  local last = redis.call('HGET', m, 'last_seq')
  if not last then
    return {'0', '', {}, {}}
  end
  local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  local first_id = ''
  if #first > 0 then
    first_id = first[1][1]
  end
  return {last, first_id, redis.call('HGETALL', c), redis.call('HGETALL', r)}
end

-- Drop the entries of stream s below seq minid, with the client ids (c) of the user
-- messages dropped and the open runs (r, l) left with no entry; how many were dropped.
local function trim(s, c, r, l, minid)
  local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  if #first == 0 or seq_of(first[1][1]) >= minid then
    return 0
  end
  if redis.call('HLEN', c) > 0 then
    for _, msg in ipairs(redis.call('XRANGE', s, '-', id_of(minid - 1))) do
      local f = msg[2]
      -- A later message may have claimed the same client id: only its own is dropped.
      if f[2] == 'user_message' and f[6] ~= '' and redis.call('HGET', c, f[6]) == f[4] then
        redis.call('HDEL', c, f[6])
      end
    end
  end
  local dropped = redis.call('XTRIM', s, 'MINID', id_of(minid))
  local runs = redis.call('HGETALL', l)
  for i = 1, #runs, 2 do
    if tonumber(runs[i + 1]) < minid then
      redis.call('HDEL', r, runs[i])
      redis.call('HDEL', l, runs[i])
    end
  end
  return dropped
end
""".replace("{TERMINAL_KINDS}", _TERMINAL)

#: KEYS: epoch, prune index, then per thread s m c r l o u.
#: ARGV: epoch, worker id, worker key prefix, max_events, contiguous (1/0), threads;
#: then per thread: user, thread, ident, n, then n times seq kind run client text at.
#: Returns {'ok'} or, writing nothing, {'epoch', epoch}, {'owner', user, thread, owner},
#: {'seq', user, thread, last_seq, first seq of the batch}.
APPEND: Final = (
    _HELPERS
    + r"""
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return {'epoch', epoch or ''}
end
local threads = tonumber(ARGV[6])
local contiguous = ARGV[5] == '1'

-- Every check first: a batch is written whole or not at all.
local a = 7
for i = 0, threads - 1 do
  local k = 2 + i * 7
  local user, thread, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3])
  local other = holder(KEYS[k + 6], ARGV[2], ARGV[3])
  if other then
    return {'owner', user, thread, other}
  end
  local last = tonumber(redis.call('HGET', KEYS[k + 2], 'last_seq') or '0')
  local first = tonumber(ARGV[a + 4])
  if first <= last or (contiguous and first ~= last + 1) then
    return {'seq', user, thread, string.format('%d', last), ARGV[a + 4]}
  end
  a = a + 4 + n * 6
end

local max_events = tonumber(ARGV[4])
a = 7
for i = 0, threads - 1 do
  local k = 2 + i * 7
  local s, m, c, r, l = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local u = KEYS[k + 7]
  local thread, ident, n = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local client_ids, runs, order = {}, {}, {}
  local seq, at
  for j = 0, n - 1 do
    local b = a + 4 + j * 6
    local kind, run, client = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    seq, at = ARGV[b], ARGV[b + 5]
    redis.call('XADD', s, seq .. '-0', 'k', kind, 'r', run, 'c', client, 'x', ARGV[b + 4], 'a', at)
    if kind == 'user_message' and client ~= '' and run ~= '' then
      client_ids[#client_ids + 1] = client
      client_ids[#client_ids + 1] = run
    end
    if run ~= '' then
      if runs[run] == nil then
        order[#order + 1] = run
      end
      if TERMINAL[kind] then
        runs[run] = false
      else
        runs[run] = b
      end
    end
  end
  if #client_ids > 0 then
    hset(c, client_ids)
  end
  local texts, seqs, ended = {}, {}, {}
  for _, run in ipairs(order) do
    local b = runs[run]
    if b then
      texts[#texts + 1] = run
      texts[#texts + 1] = ARGV[b + 4]
      seqs[#seqs + 1] = run
      seqs[#seqs + 1] = ARGV[b]
    else
      ended[#ended + 1] = run
    end
  end
  if #ended > 0 then
    hdel(r, ended)
    hdel(l, ended)
  end
  if #texts > 0 then
    hset(r, texts)
    hset(l, seqs)
  end
  redis.call('HSET', m, 'last_seq', seq, 'updated_at', at)
  redis.call('ZADD', u, at, thread)
  -- The prune index: the time of the thread's oldest entry, or one before it.
  redis.call('ZADD', KEYS[2], 'NX', ARGV[a + 9], ident)
  if max_events > 0 then
    trim(s, c, r, l, tonumber(seq) - max_events + 1)
  end
  a = a + 4 + n * 6
end
return {'ok'}
"""
)

#: KEYS: m s c r. Returns the head (see ``head`` above).
HEAD: Final = _HELPERS + "\nreturn head(KEYS[1], KEYS[2], KEYS[3], KEYS[4])\n"

#: KEYS: o m s c r. ARGV: worker id, worker key prefix.
#: Returns {'held', owner} or {'ok', head}.
CLAIM: Final = (
    _HELPERS
    + r"""
local other = holder(KEYS[1], ARGV[1], ARGV[2])
if other then
  return {'held', other}
end
redis.call('SET', KEYS[1], ARGV[1])
return {'ok', head(KEYS[2], KEYS[3], KEYS[4], KEYS[5])}
"""
)

#: KEYS: o. ARGV: worker id.
RELEASE: Final = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS: epoch. ARGV: a new epoch. Returns the store's epoch (the new one if it had none).
EPOCH: Final = r"""
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

#: KEYS: the user's thread set. ARGV: the user's meta key prefix, the last rank wanted.
#: Returns thread, last_seq, updated_at, ... of the candidates: the first ranks by time
#: and the whole group of equal time at the cut (ties go by thread id, sorted outside).
THREADS: Final = r"""
local top = redis.call('ZREVRANGE', KEYS[1], 0, ARGV[2], 'WITHSCORES')
if #top == 0 then
  return {}
end
local low = top[#top]
local ids, seen = {}, {}
for i = 1, #top, 2 do
  ids[#ids + 1] = top[i]
  seen[top[i]] = true
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], low, low)) do
  if not seen[id] then
    ids[#ids + 1] = id
  end
end
local out = {}
for _, id in ipairs(ids) do
  local meta = redis.call('HMGET', ARGV[1] .. id, 'last_seq', 'updated_at')
  out[#out + 1] = id
  out[#out + 1] = meta[1]
  out[#out + 1] = meta[2]
end
return out
"""

#: KEYS: the prune index. ARGV: prefix, cutoff, entries budget, threads per call.
#: Drops the entries with ``at < cutoff`` from the front of the threads whose oldest
#: entry may be older; a thread left empty leaves its user's list (and the index).
#: Returns {dropped, 1 if more may remain else 0}.
PRUNE: Final = (
    _HELPERS
    + r"""
-- '{n}:{user}:{thread}' -> the user's thread set key, the thread id (n counts code points).
local function split(prefix, ident)
  local n, rest = string.match(ident, '^(%d+):(.*)$')
  local pos = 1
  for _ = 1, tonumber(n) do
    pos = pos + 1
    while pos <= #rest and string.byte(rest, pos) >= 128 and string.byte(rest, pos) < 192 do
      pos = pos + 1
    end
  end
  return prefix .. ':u:' .. n .. ':' .. string.sub(rest, 1, pos - 1), string.sub(rest, pos + 1)
end

local prefix, cutoff, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[4])
local dropped, more = 0, #members == tonumber(ARGV[4])
for _, ident in ipairs(members) do
  if budget <= 0 then
    more = true
    break
  end
  local s, m = prefix .. ':s:' .. ident, prefix .. ':m:' .. ident
  local c, r, l = prefix .. ':c:' .. ident, prefix .. ':r:' .. ident, prefix .. ':l:' .. ident
  local keep, keep_at, scanned, start = nil, nil, 0, '-'
  while not keep do
    local batch = redis.call('XRANGE', s, start, '+', 'COUNT', 100)
    if #batch == 0 then
      break
    end
    for _, msg in ipairs(batch) do
      if scanned >= budget or tonumber(msg[2][10]) >= cutoff then
        keep, keep_at = seq_of(msg[1]), msg[2][10]
        break
      end
      scanned = scanned + 1
    end
    start = '(' .. batch[#batch][1]
  end
  if keep then
    dropped = dropped + trim(s, c, r, l, keep)
    if tonumber(keep_at) >= cutoff then
      redis.call('ZADD', KEYS[1], 'XX', keep_at, ident)
    else
      more = true
    end
  else
    local last = tonumber(redis.call('HGET', m, 'last_seq') or '0')
    dropped = dropped + redis.call('XTRIM', s, 'MINID', id_of(last + 1))
    redis.call('DEL', c, r, l)
    redis.call('ZREM', KEYS[1], ident)
    local u, thread = split(prefix, ident)
    redis.call('ZREM', u, thread)
  end
  budget = budget - scanned
end
return {string.format('%d', dropped), more and '1' or '0'}
"""
)
