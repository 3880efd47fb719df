-- neuroflow's least rights on the REST API (issue 12): every service has its own Orthanc user, and each user
-- may send only the requests listed for it under Neuroflow.Rights in the configuration (the table of
-- services/neuroflow/core/orthanc_rights.py; the chart's copy is helm/neuroflow/files/orthanc-rights.json).
-- Orthanc 1.10 authenticates RegisteredUsers itself (401 without valid credentials) and then asks this
-- filter, its documented hook for authorization; false is answered 403 Forbidden.
--
-- A rule is "METHOD /path": that method on the path and everything under it, segment by segment; "*" as the
-- method is any method, "*" as a segment any one segment. A user without rules may do nothing.

local rights = (GetOrthancConfiguration()["Neuroflow"] or {})["Rights"] or {}

local function Segments(path)
  local out = {}
  for segment in string.gmatch(path, "[^/]+") do
    table.insert(out, segment)
  end
  return out
end

-- Parsed once: { user = { { method = "GET", path = { "studies" } }, ... } }
local rules = {}
for user, list in pairs(rights) do
  rules[user] = {}
  for _, rule in ipairs(list) do
    local method, path = string.match(rule, "^(%S+)%s+(%S+)$")
    if method ~= nil then
      table.insert(rules[user], { method = method, path = Segments(path) })
    else
      print("neuroflow service rights: ignoring malformed rule '" .. tostring(rule) .. "' of " .. user)
    end
  end
end

local function Matches(rule, method, segments)
  if rule.method ~= "*" and rule.method ~= method then
    return false
  end
  if #segments < #rule.path then
    return false
  end
  for i, want in ipairs(rule.path) do
    if want ~= "*" and want ~= segments[i] then
      return false
    end
  end
  return true
end

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  local own = rules[username]
  if own == nil then
    return false
  end
  local segments = Segments(string.match(uri, "^[^?]*"))
  for _, rule in ipairs(own) do
    if Matches(rule, method, segments) then
      return true
    end
  end
  return false
end
