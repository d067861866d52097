-- Shared by the queue's scripts: where a stored envelope stands in the sequence of
-- messages all servers read. Its id is "$era.$event.$count" (hex, see
-- sequence.message_id). The era changes when Redis loses its data (event numbers start
-- again); positions compare within one era only.
local function position(item)
  local era, g, n = string.match(item, '^{"id":"([^".]*)%.(%x+)%.(%x+)"')
  if g then return tonumber(g, 16), tonumber(n, 16), era end
  return -1, 0, nil
end
-- A place given apart from the envelope ("$era.$event.$count"): an inbox message's id
-- is made from its entry, not from where it was read.
local function place(text)
  local era, g, n = string.match(text, '^([^.]*)%.(%x+)%.(%x+)$')
  if g then return tonumber(g, 16), tonumber(n, 16), era end
  return -1, 0, nil
end
local function id_of(item)
  return string.match(item, '^{"id":"([^"]*)"')
end
-- An inbox message's id is made from its stream entry ("i-$ms-$seq"): two of them stand
-- in the stream's order, the order they were forwarded in.
local function entry_of(id)
  local ms, sq = string.match(id or '', '^i%-(%d+)%-(%d+)$')
  if ms then return tonumber(ms), tonumber(sq) end
end
local function before(a, b)
  local ag, an, aera = position(a)
  local bg, bn, bera = position(b)
  if aera ~= nil or bera ~= nil then
    return aera ~= nil and aera == bera and (ag < bg or (ag == bg and an < bn))
  end
  local am, as = entry_of(id_of(a))
  local bm, bs = entry_of(id_of(b))
  return am ~= nil and bm ~= nil and (am < bm or (am == bm and as < bs))
end
