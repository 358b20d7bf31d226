"""The Lua that runs every call on Redis: one script, one operation per run, so each call is atomic.

``LUA`` holds shared helpers and the operations (``OPS.name = function() ... end``); each
operation becomes a script of its own (``SCRIPTS``: the helpers, the operation, its call), loaded
once with ``SCRIPT LOAD`` and called as ``EVALSHA sha 1 KEY OP HOLDER ARGS...``:

* ``KEY`` is the key of the object the call is about. It is the only declared key: every other
  key the script touches carries the same hash tag (``shoal:{namespace}:...``), so in a Redis
  Cluster they all live in the slot ``KEY`` routes to.
* ``OP`` names the operation (also given, so that every script reads its arguments alike).
* ``HOLDER`` is the caller: ``TOKEN/THREAD``. ``TOKEN`` names one process's presence: the key
  ``shoal:{ns}:client:TOKEN`` exists while that process lives (its heartbeat renews it); a lock,
  a per-object lock or a semaphore count held by a ``TOKEN`` whose key has expired is free again.

Every operation answers a table whose first item is a status:

====  =========  ==========================================================================
code  name       rest of the reply
====  =========  ==========================================================================
0     OK         the result (raw encoded values; the client decodes them)
1     BLOCKED    ``wait_ms`` (-1: no bound known): the caller was registered as a waiter and
                 must wait on its wake list ``shoal:{ns}:wake:HOLDER`` (BLPOP), then retry
2     ERROR      exception name, message: the client raises that exception
3     FALLBACK   the Lua side cannot do it (a big int, a non-number): the client does it
4     GONE       the object no longer exists (``ReferenceError`` in the client)
====  =========  ==========================================================================

Values are opaque strings here (the codec's msgpack bytes), with two exceptions read in Lua:
numbers (``incr``) and references (msgpack extension type 6, ``[key, typeid]``), whose count of
containers referring to them (``r`` in the object's ``:meta`` hash) is kept so that a nested
container is deleted, with everything it holds, when the last container slot lets it go.
"""

from __future__ import annotations

import re

__all__ = ["BLOCKED", "ERROR", "FALLBACK", "GONE", "LUA", "OK"]

OK, BLOCKED, ERROR, FALLBACK, GONE = 0, 1, 2, 3, 4

LUA = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end

local K = KEYS[1]
local OP = ARGV[1]
local HOLDER = ARGV[2]
local TOKEN = string.match(HOLDER, '^[^/]*')
local P = string.match(K, '^(.-}:)')
local call = redis.call
local unpack = unpack or table.unpack

local SUFFIXES = {':meta', ':lock', ':inner', ':waiters', ':cond', ':parties', ':holders',
                  ':putters', ':joiners', ':getters'}

-- presence ---------------------------------------------------------------------------------
local function token_of(holder) return string.match(holder, '^[^/]*') end
local function alive(token)
  return token == '*' or call('EXISTS', P .. 'client:' .. token) == 1
end
local function pttl_of(token)
  local t = call('PTTL', P .. 'client:' .. token)
  if t < 0 then return -1 end
  return t
end

-- waiting and waking -------------------------------------------------------------------------
local function block(set, wait_ms)
  call('SADD', set, HOLDER)
  call('DEL', P .. 'wake:' .. HOLDER)
  return {1, wait_ms}
end
local function wake(set)
  local hs = call('SMEMBERS', set)
  for _, h in ipairs(hs) do
    local w = P .. 'wake:' .. h
    call('RPUSH', w, 'w')
    call('PEXPIRE', w, 60000)
  end
  if #hs > 0 then call('DEL', set) end
end

-- bulk commands (Lua's unpack has a limit on arguments) ------------------------------------
local function bulk(cmd, key, items, from)
  from = from or 1
  local n = #items
  local i = from
  while i <= n do
    local j = math.min(i + 999, n)
    call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
end
local function bulk_pairs(key, items, from)
  local n = #items
  local i = from or 1
  while i <= n do
    local j = math.min(i + 999, n)
    if (j - i) % 2 == 0 then j = j - 1 end
    call('HSET', key, unpack(items, i, j))
    i = j + 1
  end
end

local function args_from(i)
  local t = {}
  for j = i, #ARGV do t[#t + 1] = ARGV[j] end
  return t
end

-- references -------------------------------------------------------------------------------
local function ref_of(v)
  if not v or #v < 3 then return nil end
  local b = string.byte(v, 1)
  local payload
  if b == 0xc7 then
    if string.byte(v, 3) ~= 6 then return nil end
    payload = string.sub(v, 4)
  elseif b == 0xc8 then
    if string.byte(v, 4) ~= 6 then return nil end
    payload = string.sub(v, 5)
  elseif b >= 0xd4 and b <= 0xd8 then
    if string.byte(v, 2) ~= 6 then return nil end
    payload = string.sub(v, 3)
  else
    return nil
  end
  local t = cmsgpack.unpack(payload)
  return t[1], t[2]
end

local function pinned(x)
  local s = call('HGET', x .. ':meta', 's')
  return s and alive(s)
end

local function destroy_from(stack)
  -- each key on the stack has lost one container slot referring to it
  while #stack > 0 do
    local x = table.remove(stack)
    if call('EXISTS', x .. ':meta') == 1 then
      local r = call('HINCRBY', x .. ':meta', 'r', -1)
      if r <= 0 and not pinned(x) then
        local t = call('HGET', x .. ':meta', 't')
        local vals = {}
        if t == 'dict' or t == 'Namespace' then vals = call('HVALS', x)
        elseif t == 'list' then vals = call('LRANGE', x, 0, -1)
        elseif t == 'Value' then vals = {call('GET', x)} end
        for _, v in ipairs(vals) do
          local rk = ref_of(v)
          if rk then table.insert(stack, rk) end
        end
        if t == 'Queue' or t == 'JoinableQueue' then
          for _, tok in ipairs(call('SMEMBERS', x .. ':getters')) do
            call('DEL', x .. ':inflight:' .. tok)
          end
        end
        call('DEL', x)
        for _, s in ipairs(SUFFIXES) do call('DEL', x .. s) end
      end
    end
  end
end

local function let_go(values)
  local stack = {}
  for _, v in ipairs(values) do
    local rk = ref_of(v)
    if rk then table.insert(stack, rk) end
  end
  if #stack > 0 then destroy_from(stack) end
end

local function let_go_one(v)
  if v and ref_of(v) then let_go({v}) end
end

-- new nested containers and references to existing objects, made by the client's encoder:
-- msgpack [[existing keys to count once more], [key, type, parent, items], ...]
local function check_plan(plan)
  if not plan then return nil end
  for _, rk in ipairs(plan[1]) do
    if call('EXISTS', rk .. ':meta') == 0 then
      return {2, 'ReferenceError', 'the shared object ' .. rk .. ' no longer exists'}
    end
  end
  return nil
end
local function apply_plan(plan)
  if not plan then return end
  for _, rk in ipairs(plan[1]) do call('HINCRBY', rk .. ':meta', 'r', 1) end
  for i = 2, #plan do
    local o = plan[i]
    call('HSET', o[1] .. ':meta', 't', o[2], 'p', o[3], 'r', 1)
    if #o[4] > 0 then
      if o[2] == 'list' then bulk('RPUSH', o[1], o[4]) else bulk_pairs(o[1], o[4]) end
    end
  end
end
local function read_plan(s)
  if not s or s == '' then return nil end
  return cmsgpack.unpack(s)
end

-- the per-object lock (with d.locked()) ------------------------------------------------------
-- K:lock is a hash {o = TOKEN of the holder, n = depth}; every ancestor of a locked object has
-- "TOKEN|KEY" in its :inner set, so locking the ancestor waits for it.
local function parent_of(x)
  return call('HGET', x .. ':meta', 'p')
end

local function gate(k)
  local p = parent_of(k)
  if not p then return {4} end
  local cur = k
  while true do
    local o = call('HGET', cur .. ':lock', 'o')
    if o and o ~= TOKEN and alive(o) then return block(cur .. ':waiters', pttl_of(o)) end
    if p == '' then return nil end
    cur = p
    p = parent_of(cur) or ''
  end
end

local function ancestors(k)
  local out = {}
  local p = parent_of(k) or ''
  while p ~= '' do
    table.insert(out, p)
    p = parent_of(p) or ''
  end
  return out
end

-- numbers (incr) ---------------------------------------------------------------------------
local TWO53 = 9007199254740992
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function number_of(v)
  -- (value, is_float), or nil when v is not a plain int/float this side can handle exactly
  local b = string.byte(v, 1)
  local n = #v
  if b <= 0x7f and n == 1 then return b, false end
  if b >= 0xe0 and n == 1 then return b - 256, false end
  if b == 0xcc and n == 2 then return string.byte(v, 2), false end
  if b == 0xcd and n == 3 then return string.byte(v, 2) * 256 + string.byte(v, 3), false end
  if b == 0xce and n == 5 then return u32(v, 2), false end
  if b == 0xcf and n == 9 then
    local x = u32(v, 2) * 4294967296 + u32(v, 6)
    if x >= TWO53 then return nil end
    return x, false
  end
  if b == 0xd0 and n == 2 then local x = string.byte(v, 2); if x >= 128 then x = x - 256 end; return x, false end
  if b == 0xd1 and n == 3 then local x = string.byte(v, 2) * 256 + string.byte(v, 3); if x >= 32768 then x = x - 65536 end; return x, false end
  if b == 0xd2 and n == 5 then local x = u32(v, 2); if x >= 2147483648 then x = x - 4294967296 end; return x, false end
  if b == 0xd3 and n == 9 then
    local hi, lo = u32(v, 2), u32(v, 6)
    if hi >= 2147483648 then hi = hi - 4294967296 end
    local x = hi * 4294967296 + lo
    if x >= TWO53 or x <= -TWO53 then return nil end
    return x, false
  end
  if b == 0xcb and n == 9 then return struct.unpack('>d', string.sub(v, 2)), true end
  if b == 0xca and n == 5 then return struct.unpack('>f', string.sub(v, 2)), true end
  return nil
end
local function encode_number(x, is_float)
  if is_float then return '\203' .. struct.pack('>d', x) end
  return cmsgpack.pack(x)
end

-- a snapshot of containers for copy(): {key, type, items} for the object and every dict/list
-- it reaches through references
local function dump(k)
  local out, seen, queue, i = {}, {[k] = true}, {k}, 1
  while i <= #queue do
    local x = queue[i]
    i = i + 1
    local t = call('HGET', x .. ':meta', 't')
    local items = {}
    local vstart, vstep = 1, 1
    if t == 'list' then items = call('LRANGE', x, 0, -1)
    elseif t == 'dict' or t == 'Namespace' then items = call('HGETALL', x); vstart, vstep = 2, 2
    elseif t == 'Value' then items = {call('GET', x) or '\192'} end
    for j = vstart, #items, vstep do
      local rk, rt = ref_of(items[j])
      if rk and (rt == 'dict' or rt == 'list') and not seen[rk] then
        seen[rk] = true
        table.insert(queue, rk)
      end
    end
    table.insert(out, {x, t or '', items})
  end
  return out
end

-- a value taken out of a container: a nested container it was the last to refer to is
-- deleted, so the caller gets its snapshot instead
local function take(v)
  local rk, rt = ref_of(v)
  if rk and (rt == 'dict' or rt == 'list') then
    local r = tonumber(call('HGET', rk .. ':meta', 'r') or '0')
    if r <= 1 and not pinned(rk) then
      local snap = dump(rk)
      let_go({v})
      return {0, v, snap}
    end
  end
  if rk then let_go({v}) end
  return {0, v}
end

local OPS = {}

-- objects ----------------------------------------------------------------------------------
-- create: typeid, standalone ('1'/'0'), meta pairs count, meta pairs..., plan, items...
OPS.create = function()
  local typeid = ARGV[3]
  local nmeta = tonumber(ARGV[5])
  local plan = read_plan(ARGV[6 + 2 * nmeta])
  local err = check_plan(plan)
  if err then return err end
  call('HSET', K .. ':meta', 't', typeid, 'p', '', 'r', 0)
  if ARGV[4] == '1' then call('HSET', K .. ':meta', 's', TOKEN) end
  for i = 6, 5 + 2 * nmeta, 2 do call('HSET', K .. ':meta', ARGV[i], ARGV[i + 1]) end
  apply_plan(plan)
  local first = 7 + 2 * nmeta
  if #ARGV >= first then
    if typeid == 'list' or typeid == 'Queue' or typeid == 'JoinableQueue' then bulk('RPUSH', K, ARGV, first)
    elseif typeid == 'Value' then call('SET', K, ARGV[first])
    else bulk_pairs(K, ARGV, first) end
  end
  return {0}
end

OPS.root = function()
  if call('EXISTS', K .. ':meta') == 0 then
    call('HSET', K .. ':meta', 't', 'dict', 'p', '', 'r', 1, 's', '*')
  end
  return {0}
end

-- unpin: keys made standalone by a manager that shuts down; those no container refers to go
OPS.unpin = function()
  local stack = {}
  for i = 3, #ARGV do
    local x = ARGV[i]
    if call('EXISTS', x .. ':meta') == 1 and call('HGET', x .. ':meta', 's') ~= '*' then
      call('HDEL', x .. ':meta', 's')
      call('HINCRBY', x .. ':meta', 'r', 1)
      table.insert(stack, x)
    end
  end
  destroy_from(stack)
  return {0}
end

OPS.typeof = function()
  local t = call('HGET', K .. ':meta', 't')
  if not t then return {4} end
  return {0, t}
end

-- dict and Namespace: a hash of encoded key -> encoded value -------------------------------
OPS.get = function()
  local g = gate(K); if g then return g end
  return {0, call('HGET', K, ARGV[3]) or false}
end
OPS.getm = function()
  local g = gate(K); if g then return g end
  local vals = {}
  local i = 3
  while i <= #ARGV do
    local j = math.min(i + 999, #ARGV)
    local part = call('HMGET', K, unpack(ARGV, i, j))
    for x = 1, j - i + 1 do vals[#vals + 1] = part[x] or false end
    i = j + 1
  end
  return {0, vals}
end
OPS.set = function()
  local g = gate(K); if g then return g end
  local plan = read_plan(ARGV[5])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  local old = call('HGET', K, ARGV[3])
  call('HSET', K, ARGV[3], ARGV[4])
  let_go_one(old)
  return {0}
end
OPS.del = function()
  local g = gate(K); if g then return g end
  local old = call('HGET', K, ARGV[3])
  if not old then return {2, 'KeyError', ''} end
  call('HDEL', K, ARGV[3])
  let_go_one(old)
  return {0}
end
OPS.has = function()
  local g = gate(K); if g then return g end
  return {0, call('HEXISTS', K, ARGV[3])}
end
OPS.len = function()
  local g = gate(K); if g then return g end
  return {0, call('HLEN', K)}
end
OPS.keys = function()
  local g = gate(K); if g then return g end
  return {0, call('HKEYS', K)}
end
OPS.vals = function()
  local g = gate(K); if g then return g end
  return {0, call('HVALS', K)}
end
OPS.items = function()
  local g = gate(K); if g then return g end
  return {0, call('HGETALL', K)}
end
OPS.pop = function()
  local g = gate(K); if g then return g end
  local v = call('HGET', K, ARGV[3])
  if not v then return {0, false} end
  call('HDEL', K, ARGV[3])
  return take(v)
end
OPS.popitem = function()
  local g = gate(K); if g then return g end
  if call('HLEN', K) == 0 then return {0, false} end
  local cursor = '0'
  repeat
    local page = call('HSCAN', K, cursor, 'COUNT', 100)
    cursor = page[1]
    local kv = page[2]
    if #kv > 0 then
      local f, v = kv[#kv - 1], kv[#kv]
      call('HDEL', K, f)
      local r = take(v)
      return {0, f, r[2], r[3] or false}
    end
  until cursor == '0'
  return {0, false}
end
OPS.setdefault = function()
  local g = gate(K); if g then return g end
  local v = call('HGET', K, ARGV[3])
  if v then return {0, v} end
  local plan = read_plan(ARGV[5])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  call('HSET', K, ARGV[3], ARGV[4])
  return {0, ARGV[4]}
end
-- update: plan, field, value, field, value ... (fields distinct)
OPS.update = function()
  local g = gate(K); if g then return g end
  local plan = read_plan(ARGV[3])
  local err = check_plan(plan); if err then return err end
  if #ARGV < 5 then return {0} end
  local fields = {}
  for i = 4, #ARGV, 2 do table.insert(fields, ARGV[i]) end
  local old = {}
  for i = 1, #fields, 1000 do
    local part = call('HMGET', K, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, math.min(1000, #fields - i + 1) do
      if part[j] then table.insert(old, part[j]) end
    end
  end
  apply_plan(plan)
  bulk_pairs(K, ARGV, 4)
  let_go(old)
  return {0}
end
OPS.clear = function()
  local g = gate(K); if g then return g end
  local t = call('HGET', K .. ':meta', 't')
  local vals
  if t == 'list' then vals = call('LRANGE', K, 0, -1) else vals = call('HVALS', K) end
  call('DEL', K)
  let_go(vals)
  return {0}
end
-- incr: field, by, default
OPS.incr = function()
  local g = gate(K); if g then return g end
  local cur = call('HGET', K, ARGV[3]) or ARGV[5]
  local a, af = number_of(cur)
  local b, bf = number_of(ARGV[4])
  if a == nil or b == nil then return {3, cur} end
  local x = a + b
  local is_float = af or bf
  if not is_float and (x >= TWO53 or x <= -TWO53) then return {3, cur} end
  local enc = encode_number(x, is_float)
  call('HSET', K, ARGV[3], enc)
  return {0, enc}
end
-- cas: field, mode, expected, new, plan. mode 'n': d.get(field) is None (missing or None);
-- 'b': the stored bytes are exactly `expected`; 'm': the field is missing
OPS.cas = function()
  local g = gate(K); if g then return g end
  local cur = call('HGET', K, ARGV[3])
  local mode, expected = ARGV[4], ARGV[5]
  local ok
  if mode == 'n' then ok = (cur == nil or cur == false or cur == '\192')
  elseif mode == 'm' then ok = (not cur)
  else ok = (cur == expected) end
  if not ok then return {0, 0, cur or false} end
  local plan = read_plan(ARGV[7])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  call('HSET', K, ARGV[3], ARGV[6])
  let_go_one(cur)
  return {0, 1}
end
OPS.dump = function()
  local g = gate(K); if g then return g end
  return {0, dump(K)}
end

-- Value: a string key ----------------------------------------------------------------------
OPS.vget = function()
  local g = gate(K); if g then return g end
  return {0, call('GET', K) or '\192'}
end
OPS.vset = function()
  local g = gate(K); if g then return g end
  local plan = read_plan(ARGV[4])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  local old = call('GET', K)
  call('SET', K, ARGV[3])
  let_go_one(old)
  return {0}
end

-- list: a Redis list -------------------------------------------------------------------------
local TOMB = '\193'   -- 0xc1: never a msgpack value, so a safe placeholder for LREM
local function index_in(i, n)
  i = tonumber(i)
  if i < 0 then i = i + n end
  if i < 0 or i >= n then return nil end
  return i
end
local function opt(s) if s == '' then return nil end; return tonumber(s) end
local function slice_indices(n, start, stop, step)
  step = step or 1
  local lower, upper
  if step < 0 then lower, upper = -1, n - 1 else lower, upper = 0, n end
  local function fix(x, default)
    if x == nil then return default end
    if x < 0 then
      x = x + n
      if x < lower then x = lower end
    elseif x > upper then x = upper end
    return x
  end
  start = fix(start, step < 0 and upper or lower)
  stop = fix(stop, step < 0 and lower or upper)
  return start, stop, step
end
local function slice_positions(n, a, b, c)
  local start, stop, step = slice_indices(n, opt(a), opt(b), opt(c))
  local out = {}
  if step > 0 then
    local i = start
    while i < stop do table.insert(out, i); i = i + step end
  else
    local i = start
    while i > stop do table.insert(out, i); i = i + step end
  end
  return out, start, stop, step
end
local function rewrite(items)
  call('DEL', K)
  if #items > 0 then bulk('RPUSH', K, items) end
end

OPS.lget = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  local i = index_in(ARGV[3], n)
  if not i then return {2, 'IndexError', 'list index out of range'} end
  return {0, call('LINDEX', K, i)}
end
OPS.lslice = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  if ARGV[5] == '0' then return {2, 'ValueError', 'slice step cannot be zero'} end
  local pos, start, stop, step = slice_positions(n, ARGV[3], ARGV[4], ARGV[5])
  if #pos == 0 then return {0, {}} end
  if step == 1 then return {0, call('LRANGE', K, start, stop - 1)} end
  local lo, hi = pos[1], pos[#pos]
  if lo > hi then lo, hi = hi, lo end
  local span = call('LRANGE', K, lo, hi)
  local out = {}
  for _, p in ipairs(pos) do table.insert(out, span[p - lo + 1]) end
  return {0, out}
end
OPS.lset = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  local i = index_in(ARGV[3], n)
  if not i then return {2, 'IndexError', 'list assignment index out of range'} end
  local plan = read_plan(ARGV[5])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  local old = call('LINDEX', K, i)
  call('LSET', K, i, ARGV[4])
  let_go_one(old)
  return {0}
end
-- lsetslice: start, stop, step, plan, values...
OPS.lsetslice = function()
  local g = gate(K); if g then return g end
  if ARGV[5] == '0' then return {2, 'ValueError', 'slice step cannot be zero'} end
  local items = call('LRANGE', K, 0, -1)
  local n = #items
  local values = args_from(7)
  local pos, start, stop, step = slice_positions(n, ARGV[3], ARGV[4], ARGV[5])
  local removed = {}
  local out = {}
  if step == 1 then
    if stop < start then stop = start end
    for i = 1, start do table.insert(out, items[i]) end
    for _, v in ipairs(values) do table.insert(out, v) end
    for i = start + 1, stop do table.insert(removed, items[i]) end
    for i = stop + 1, n do table.insert(out, items[i]) end
  else
    if #values ~= #pos then
      return {2, 'ValueError', 'attempt to assign sequence of size ' .. #values ..
              ' to extended slice of size ' .. #pos}
    end
    for j, p in ipairs(pos) do
      table.insert(removed, items[p + 1])
      items[p + 1] = values[j]
    end
    out = items
  end
  local plan = read_plan(ARGV[6])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  rewrite(out)
  let_go(removed)
  return {0}
end
OPS.ldel = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  local i = index_in(ARGV[3], n)
  if not i then return {2, 'IndexError', 'list assignment index out of range'} end
  local old = call('LINDEX', K, i)
  call('LSET', K, i, TOMB)
  call('LREM', K, 1, TOMB)
  let_go_one(old)
  return {0}
end
OPS.ldelslice = function()
  local g = gate(K); if g then return g end
  if ARGV[5] == '0' then return {2, 'ValueError', 'slice step cannot be zero'} end
  local items = call('LRANGE', K, 0, -1)
  local pos = slice_positions(#items, ARGV[3], ARGV[4], ARGV[5])
  if #pos == 0 then return {0} end
  local gone = {}
  for _, p in ipairs(pos) do gone[p + 1] = true end
  local out, removed = {}, {}
  for i, v in ipairs(items) do
    if gone[i] then table.insert(removed, v) else table.insert(out, v) end
  end
  rewrite(out)
  let_go(removed)
  return {0}
end
OPS.llen = function()
  local g = gate(K); if g then return g end
  return {0, call('LLEN', K)}
end
OPS.lall = function()
  local g = gate(K); if g then return g end
  return {0, call('LRANGE', K, 0, -1)}
end
OPS.lhas = function()
  local g = gate(K); if g then return g end
  local p = call('LPOS', K, ARGV[3])
  if p then return {0, 1} end
  return {0, 0}
end
OPS.lindex = function()
  local g = gate(K); if g then return g end
  local p = call('LPOS', K, ARGV[3])
  return {0, p or -1}
end
OPS.lcount = function()
  local g = gate(K); if g then return g end
  local c = 0
  for _, v in ipairs(call('LRANGE', K, 0, -1)) do if v == ARGV[3] then c = c + 1 end end
  return {0, c}
end
-- lappend/lextend: plan, values...
OPS.lextend = function()
  local g = gate(K); if g then return g end
  local plan = read_plan(ARGV[3])
  local err = check_plan(plan); if err then return err end
  apply_plan(plan)
  if #ARGV >= 4 then bulk('RPUSH', K, ARGV, 4) end
  return {0}
end
OPS.linsert = function()
  local g = gate(K); if g then return g end
  local plan = read_plan(ARGV[5])
  local err = check_plan(plan); if err then return err end
  local n = call('LLEN', K)
  local i = tonumber(ARGV[3])
  if i < 0 then i = i + n; if i < 0 then i = 0 end end
  if i > n then i = n end
  apply_plan(plan)
  if i == 0 then call('LPUSH', K, ARGV[4])
  elseif i == n then call('RPUSH', K, ARGV[4])
  else
    local tail = call('LRANGE', K, i, -1)
    call('LTRIM', K, 0, i - 1)
    call('RPUSH', K, ARGV[4])
    bulk('RPUSH', K, tail)
  end
  return {0}
end
OPS.lpop = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  if n == 0 then return {2, 'IndexError', 'pop from empty list'} end
  local i = index_in(ARGV[3], n)
  if not i then return {2, 'IndexError', 'pop index out of range'} end
  local v
  if i == n - 1 then v = call('RPOP', K)
  elseif i == 0 then v = call('LPOP', K)
  else
    v = call('LINDEX', K, i)
    call('LSET', K, i, TOMB)
    call('LREM', K, 1, TOMB)
  end
  return take(v)
end
-- lremove: the first element whose bytes are exactly ARGV[3]
OPS.lremove = function()
  local g = gate(K); if g then return g end
  if call('LREM', K, 1, ARGV[3]) == 0 then return {0, 0} end
  let_go_one(ARGV[3])
  return {0, 1}
end
-- ldelat_if: delete index ARGV[3] if its bytes are still exactly ARGV[4]
OPS.ldelat_if = function()
  local g = gate(K); if g then return g end
  local n = call('LLEN', K)
  local i = index_in(ARGV[3], n)
  if not i or call('LINDEX', K, i) ~= ARGV[4] then return {0, 0} end
  call('LSET', K, i, TOMB)
  call('LREM', K, 1, TOMB)
  let_go_one(ARGV[4])
  return {0, 1}
end
OPS.lreverse = function()
  local g = gate(K); if g then return g end
  local items = call('LRANGE', K, 0, -1)
  if #items > 1 then
    call('DEL', K)
    bulk('LPUSH', K, items)
  end
  return {0}
end
-- limul: times, the most items the result may have
OPS.limul = function()
  local g = gate(K); if g then return g end
  local times = tonumber(ARGV[3])
  local n = call('LLEN', K)
  if times <= 0 then
    local items = call('LRANGE', K, 0, -1)
    call('DEL', K)
    let_go(items)
    return {0}
  end
  if n == 0 or times == 1 then return {0} end
  if n * times > tonumber(ARGV[4]) then
    return {2, 'MemoryError', 'a list on Redis can be repeated to at most ' .. ARGV[4] ..
            ' items, not ' .. n .. ' * ' .. times}
  end
  local items = call('LRANGE', K, 0, -1)
  for _, v in ipairs(items) do
    local rk = ref_of(v)
    if rk then call('HINCRBY', rk .. ':meta', 'r', times - 1) end
  end
  -- copies pushed about a thousand values per RPUSH: one call per copy is slow for short lists
  local per = math.max(1, math.floor(1000 / n))
  local block = {}
  for _ = 1, math.min(per, times - 1) do
    for _, v in ipairs(items) do block[#block + 1] = v end
  end
  local left = times - 1
  while left >= per do
    bulk('RPUSH', K, block)
    left = left - per
  end
  for _ = 1, left do bulk('RPUSH', K, items) end
  return {0}
end
-- lreplace: count of expected, expected..., new... (a permutation: references unchanged)
OPS.lreplace = function()
  local g = gate(K); if g then return g end
  local n = tonumber(ARGV[3])
  local items = call('LRANGE', K, 0, -1)
  if #items ~= n then return {0, 0} end
  for i = 1, n do if items[i] ~= ARGV[3 + i] then return {0, 0} end end
  rewrite(args_from(4 + n))
  return {0, 1}
end

-- with proxy.locked() ----------------------------------------------------------------------
OPS.oacquire = function()
  local p = parent_of(K)
  if not p then return {4} end
  local cur = K
  while true do
    local o = call('HGET', cur .. ':lock', 'o')
    if o and o ~= TOKEN and alive(o) then return block(cur .. ':waiters', pttl_of(o)) end
    if p == '' then break end
    cur = p
    p = parent_of(cur) or ''
  end
  for _, m in ipairs(call('SMEMBERS', K .. ':inner')) do
    local tok, lk = string.match(m, '^([^|]*)|(.*)$')
    local o = call('HGET', lk .. ':lock', 'o')
    if o == tok and alive(tok) then
      if tok ~= TOKEN then return block(lk .. ':waiters', pttl_of(tok)) end
    else
      call('SREM', K .. ':inner', m)
    end
  end
  local o = call('HGET', K .. ':lock', 'o')
  if o == TOKEN then
    call('HINCRBY', K .. ':lock', 'n', 1)
    return {0, 0}
  end
  call('HSET', K .. ':lock', 'o', TOKEN, 'n', 1)
  for _, a in ipairs(ancestors(K)) do call('SADD', a .. ':inner', TOKEN .. '|' .. K) end
  if o then return {0, 1} end
  return {0, 0}
end
-- orelease: the TOKEN the lock was taken with
OPS.orelease = function()
  local mine = ARGV[3]
  local o = call('HGET', K .. ':lock', 'o')
  if o ~= mine then
    return {2, 'LeaseExpired', 'the per-object lock was lost: this process stopped renewing its ' ..
            'lease in time and another client took the lock'}
  end
  local lapsed = not alive(mine)
  local n = call('HINCRBY', K .. ':lock', 'n', -1)
  if n <= 0 or lapsed then
    call('DEL', K .. ':lock')
    for _, a in ipairs(ancestors(K)) do call('SREM', a .. ':inner', mine .. '|' .. K) end
    wake(K .. ':waiters')
  end
  if lapsed then
    return {2, 'LeaseExpired', "the per-object lock's lease expired while it was held " ..
            '(the process did not renew it in time); it has been freed'}
  end
  return {0}
end

-- Lock and RLock: hash K {o = HOLDER, n = depth} ----------------------------------------------
-- acq: count, reentrant ('1'/'0'), register ('1'/'0')
OPS.acq = function()
  local o = call('HGET', K, 'o')
  local count = tonumber(ARGV[3])
  if not o then
    if call('EXISTS', K .. ':meta') == 0 then return {4} end
    call('HSET', K, 'o', HOLDER, 'n', count)
    return {0, 0}
  end
  if o == HOLDER and ARGV[4] == '1' then
    call('HINCRBY', K, 'n', count)
    return {0, 0}
  end
  local ot = token_of(o)
  if not alive(ot) then
    call('HSET', K, 'o', HOLDER, 'n', count)
    return {0, 1}
  end
  if ARGV[5] == '1' then return block(K .. ':waiters', pttl_of(ot)) end
  return {1, -2}
end
-- rel: mine ('1' when this thread believes it holds the lock), reentrant
OPS.rel = function()
  local o = call('HGET', K, 'o')
  if o == HOLDER then
    if not alive(TOKEN) then
      call('DEL', K)
      wake(K .. ':waiters')
      return {2, 'LeaseExpired', "the lock's lease expired while it was held (the process did " ..
              'not renew it in time); it has been freed'}
    end
    local n = call('HINCRBY', K, 'n', -1)
    if n <= 0 then
      call('DEL', K)
      wake(K .. ':waiters')
    end
    return {0}
  end
  if ARGV[3] == '1' then
    return {2, 'LeaseExpired', "the lock's lease expired while it was held (the process did " ..
            'not renew it in time) and another client has taken it since'}
  end
  if not o or not alive(token_of(o)) then
    if ARGV[4] == '1' then return {2, 'RuntimeError', 'cannot release un-acquired lock'} end
    return {2, 'RuntimeError', 'release unlocked lock'}
  end
  return {2, 'RuntimeError', 'cannot release a lock held by another process or thread'}
end
OPS.lstate = function()
  local o = call('HGET', K, 'o')
  if not o or not alive(token_of(o)) then return {0, 0, 0} end
  if o == HOLDER then return {0, 1, tonumber(call('HGET', K, 'n'))} end
  return {0, 1, 0}
end

-- Condition: K:cond is the list of waiting HOLDERs; the lock is the key in meta 'l' ----------
local function owns(lk)
  return call('HGET', lk, 'o') == HOLDER and alive(TOKEN)
end
OPS.cwait = function()
  local lk = call('HGET', K .. ':meta', 'l')
  if not lk then return {4} end
  if not owns(lk) then return {2, 'RuntimeError', 'cannot wait on un-acquired lock'} end
  local n = call('HGET', lk, 'n')
  call('DEL', lk)
  wake(lk .. ':waiters')
  call('RPUSH', K .. ':cond', HOLDER)
  call('DEL', P .. 'wake:' .. HOLDER)
  return {0, tonumber(n)}
end
-- cpoll: final ('1' when the wait timed out): 1 = notified, 0 = not (still waiting unless final)
OPS.cpoll = function()
  local pos = call('LPOS', K .. ':cond', HOLDER)
  if not pos then return {0, 1} end
  if ARGV[3] == '1' then
    call('LREM', K .. ':cond', 1, HOLDER)
    return {0, 0}
  end
  return {1, -1}
end
OPS.cnotify = function()
  local lk = call('HGET', K .. ':meta', 'l')
  if not lk then return {4} end
  if not owns(lk) then return {2, 'RuntimeError', 'cannot notify on un-acquired lock'} end
  local n = tonumber(ARGV[3])
  if n < 0 then n = call('LLEN', K .. ':cond') end
  while n > 0 do
    local h = call('LPOP', K .. ':cond')
    if not h then break end
    if alive(token_of(h)) then
      local w = P .. 'wake:' .. h
      call('RPUSH', w, 'n')
      call('PEXPIRE', w, 60000)
      n = n - 1
    end
  end
  return {0}
end
OPS.clock = function()
  return {0, call('HGET', K .. ':meta', 'l') or false}
end

-- Event: K exists while set; 'g' in K:meta counts the set() calls, so that a waiter woken by
-- one returns True even if a clear() came before it looked (threading's set() releases every
-- thread waiting at that moment)
OPS.eset = function()
  if call('EXISTS', K .. ':meta') == 0 then return {4} end
  call('SET', K, '1')
  call('HINCRBY', K .. ':meta', 'g', 1)
  wake(K .. ':waiters')
  return {0}
end
OPS.eclear = function()
  call('DEL', K)
  return {0}
end
OPS.eis = function()
  return {0, call('EXISTS', K)}
end
-- ewait: register ('1'/'0'), the generation the wait began in ('': this is its first look).
-- Blocked, it answers the generation to pass next time.
OPS.ewait = function()
  if call('EXISTS', K) == 1 then return {0, 1} end
  local gen = call('HGET', K .. ':meta', 'g') or '0'
  if ARGV[4] ~= '' and ARGV[4] ~= gen then return {0, 1} end
  if ARGV[3] == '1' then
    local r = block(K .. ':waiters', -1)
    r[3] = gen
    return r
  end
  return {0, 0}
end

-- Semaphore: K {v = free count}; K:holders {TOKEN = counts taken and not given back} --------
local function sem_purge()
  local v = tonumber(call('HGET', K, 'v') or '0')
  local hs = call('HGETALL', K .. ':holders')
  local soonest = -1
  for i = 1, #hs, 2 do
    if not alive(hs[i]) then
      v = v + tonumber(hs[i + 1])
      call('HDEL', K .. ':holders', hs[i])
    else
      local t = pttl_of(hs[i])
      if t >= 0 and (soonest < 0 or t < soonest) then soonest = t end
    end
  end
  call('HSET', K, 'v', v)
  return v, soonest
end
OPS.sacq = function()
  if call('EXISTS', K .. ':meta') == 0 then return {4} end
  local v, soonest = sem_purge()
  if v > 0 then
    call('HSET', K, 'v', v - 1)
    call('HINCRBY', K .. ':holders', TOKEN, 1)
    return {0, 1}
  end
  if ARGV[3] == '1' then return block(K .. ':waiters', soonest) end
  return {0, 0}
end
OPS.srel = function()
  if call('EXISTS', K .. ':meta') == 0 then return {4} end
  local n = tonumber(ARGV[3])
  local v = sem_purge()
  local bound = call('HGET', K .. ':meta', 'bound')
  if bound and v + n > tonumber(bound) then
    return {2, 'ValueError', 'Semaphore released too many times'}
  end
  call('HSET', K, 'v', v + n)
  local left = n
  local own = tonumber(call('HGET', K .. ':holders', TOKEN) or '0')
  local function give(tok, have)
    local g = math.min(have, left)
    if g > 0 then
      if g == have then call('HDEL', K .. ':holders', tok)
      else call('HINCRBY', K .. ':holders', tok, -g) end
      left = left - g
    end
  end
  give(TOKEN, own)
  if left > 0 then
    local hs = call('HGETALL', K .. ':holders')
    for i = 1, #hs, 2 do
      if left <= 0 then break end
      give(hs[i], tonumber(hs[i + 1]))
    end
  end
  wake(K .. ':waiters')
  return {0}
end
OPS.sval = function()
  local v = sem_purge()
  return {0, v}
end

-- Barrier: K {count, gen, broken, busy}; K:parties: the HOLDERs waiting -------------------
local function barrier_end(broken)
  -- the waiters of this generation are let go: with BrokenBarrierError if it is marked 'r<gen>'
  local gen = call('HGET', K, 'gen') or '0'
  if call('HGET', K, 'count') ~= '0' then call('HSET', K .. ':meta', 'r' .. gen, 1) end
  call('HINCRBY', K, 'gen', 1)
  call('HSET', K, 'count', 0, 'busy', 0, 'broken', broken)
  call('DEL', K .. ':parties')
  wake(K .. ':waiters')
end
local function barrier_break() barrier_end(1) end
local function barrier_pass()
  call('HINCRBY', K, 'gen', 1)
  call('HSET', K, 'count', 0, 'busy', 0)
  call('DEL', K .. ':parties')
  wake(K .. ':waiters')
end
local function barrier_dead_party()
  -- a party that died while waiting (its lease ran out) breaks the barrier
  for _, h in ipairs(call('SMEMBERS', K .. ':parties')) do
    if not alive(token_of(h)) then
      barrier_break()
      return true
    end
  end
  return false
end
OPS.bwait = function()
  local st = call('HMGET', K, 'count', 'gen', 'broken', 'busy')
  local parties = tonumber(call('HGET', K .. ':meta', 'parties') or '0')
  if parties == 0 then return {4} end
  if st[3] == '1' then return {2, 'BrokenBarrierError', ''} end
  if st[4] == '1' then return block(K .. ':waiters', -1) end
  -- the parties counted must still be there, or this arrival would pass for a dead one's
  if barrier_dead_party() then return {2, 'BrokenBarrierError', ''} end
  local count = tonumber(st[1] or '0')
  local gen = st[2] or '0'
  local index = count
  count = count + 1
  call('HSET', K, 'count', count)
  if count >= parties then
    local action = call('HGET', K .. ':meta', 'action')
    if action then
      call('HSET', K, 'busy', 1)
      return {5, index, gen, action}
    end
    barrier_pass()
    return {0, index}
  end
  call('SADD', K .. ':parties', HOLDER)
  call('SADD', K .. ':waiters', HOLDER)
  call('DEL', P .. 'wake:' .. HOLDER)
  return {1, -1, index, gen}
end
-- bcheck: gen, final ('1': the waiter's timeout has passed)
OPS.bcheck = function()
  local st = call('HMGET', K, 'gen', 'broken')
  if (st[1] or '0') ~= ARGV[3] then
    if call('HGET', K .. ':meta', 'r' .. ARGV[3]) then return {2, 'BrokenBarrierError', ''} end
    return {0}
  end
  if st[2] == '1' then return {2, 'BrokenBarrierError', ''} end
  if barrier_dead_party() then return {2, 'BrokenBarrierError', ''} end
  if ARGV[4] == '1' then
    barrier_break()
    return {2, 'BrokenBarrierError', ''}
  end
  return block(K .. ':waiters', -1)
end
-- bdone: ok ('1'/'0') after the action ran in the last party to arrive
OPS.bdone = function()
  if ARGV[3] == '1' then barrier_pass() else barrier_break() end
  return {0}
end
-- bleave: gen. A waiter interrupted by an exception leaves its place (as threading's does),
-- unless its generation has ended meanwhile.
OPS.bleave = function()
  if (call('HGET', K, 'gen') or '0') ~= ARGV[3] then return {0} end
  if call('SREM', K .. ':parties', HOLDER) == 1 then
    call('HINCRBY', K, 'count', -1)
    call('SREM', K .. ':waiters', HOLDER)
  end
  return {0}
end
OPS.babort = function()
  barrier_break()
  return {0}
end
OPS.breset = function()
  barrier_end(0)
  return {0}
end
OPS.bstate = function()
  local st = call('HMGET', K, 'count', 'broken', 'busy')
  local parties = tonumber(call('HGET', K .. ':meta', 'parties') or '0')
  local waiting = tonumber(st[1] or '0')
  if st[3] == '1' then waiting = 0 end
  return {0, parties, waiting, st[2] == '1' and 1 or 0}
end

-- Queue: K is the list of items (RPUSH at the tail, taken from the head) -------------------
local function queue_recover()
  for _, tok in ipairs(call('SMEMBERS', K .. ':getters')) do
    if not alive(tok) then
      local f = K .. ':inflight:' .. tok
      while call('LMOVE', f, K, 'RIGHT', 'LEFT') do end
      call('SREM', K .. ':getters', tok)
    end
  end
end
-- qput: item, register
OPS.qput = function()
  local maxsize = tonumber(call('HGET', K .. ':meta', 'maxsize') or '-1')
  if maxsize < 0 then return {4} end
  if maxsize > 0 and call('LLEN', K) >= maxsize then
    if ARGV[4] == '1' then return block(K .. ':putters', -1) end
    return {2, 'queue.Full', ''}
  end
  call('RPUSH', K, ARGV[3])
  call('HINCRBY', K .. ':meta', 'u', 1)
  return {0}
end
-- qget: register ('1': the caller blocks next on BLMOVE into K:inflight:TOKEN)
OPS.qget = function()
  if call('EXISTS', K .. ':meta') == 0 then return {4} end
  if call('SCARD', K .. ':getters') > 0 then queue_recover() end
  local v = call('LPOP', K)
  if v then
    wake(K .. ':putters')
    return {0, v}
  end
  if ARGV[3] == '1' then call('SADD', K .. ':getters', TOKEN) end
  return {1, -1}
end
-- qack: the item a BLMOVE moved into this process's in-flight list has reached it
OPS.qack = function()
  call('LREM', K .. ':inflight:' .. TOKEN, 1, ARGV[3])
  wake(K .. ':putters')
  return {0}
end
OPS.qsize = function()
  return {0, call('LLEN', K), tonumber(call('HGET', K .. ':meta', 'maxsize') or '0')}
end
OPS.qdone = function()
  local u = call('HINCRBY', K .. ':meta', 'u', -1)
  if u < 0 then
    call('HSET', K .. ':meta', 'u', 0)
    return {2, 'ValueError', 'task_done() called too many times'}
  end
  if u == 0 then wake(K .. ':joiners') end
  return {0}
end
OPS.qjoin = function()
  local u = tonumber(call('HGET', K .. ':meta', 'u') or '0')
  if u <= 0 then return {0} end
  return block(K .. ':joiners', -1)
end

"""


def _split(source: str) -> tuple[str, dict[str, str]]:
    """The helpers (everything but the operations) and each operation's definition."""
    blocks = dict(_OP.findall(source))
    return _OP.sub("", source), {name: f"OPS.{name} = function(){body}" for name, body in
                                 blocks.items()}


def _chunks(prelude: str) -> list[tuple[str | None, str]]:
    """The prelude's top-level statements, each with the name it defines (None: none)."""
    out: list[tuple[str | None, str]] = []
    for part in re.split(r"\n(?=local |if |-- )", prelude):
        m = re.match(r"local (?:function )?(\w+)", part)
        out.append((m.group(1) if m else None, part + "\n"))
    return out


def _script(body: str, name: str) -> str:
    """The helpers ``body`` needs (found by name, transitively), the operation, its call."""
    chunks = _chunks(_PRELUDE)
    defined = {n: text for n, text in chunks if n is not None}
    needed: set[str] = set()
    todo = [body]
    while todo:
        for word in set(re.findall(r"[A-Za-z_]\w*", todo.pop())):
            if word in defined and word not in needed:
                needed.add(word)
                todo.append(defined[word])
    # K, OP, HOLDER ... are small and read ARGV: always kept, so every script starts alike
    keep = {"K", "OP", "HOLDER", "TOKEN", "P", "call", "unpack", "OPS"}
    text = "".join(t for n, t in chunks
                   if (n is None and not t.startswith("--")) or n in needed or n in keep)
    return f"{text}{body}return OPS.{name}()\n"


_OP = re.compile(r"^OPS\.(\w+) = function\(\)(\n.*?^end\n)", re.MULTILINE | re.DOTALL)
_PRELUDE, _OPS = _split(LUA)

#: One script per operation: the helpers it uses, that operation, and the call. (One script
#: holding every operation would make each run define all of them, a closure each, and every
#: helper: measurably slower.)
SCRIPTS: dict[str, str] = {name: _script(body, name) for name, body in _OPS.items()}
