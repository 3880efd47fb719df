-- neuroflow's disk guard (issue 11): when a watched filesystem (Neuroflow.StorageGuard.Directories; default
-- Orthanc's StorageDirectory; the local stack adds neuroflow's volume store) has less free space than
-- Neuroflow.StorageGuard.MinimumFreeBytes, an instance received by C-STORE is refused with DIMSE status
-- 0xA700 (Refused: Out of Resources), which a modality keeps and sends again later, instead of Orthanc
-- filling the disk. Instances stored through the REST API (neuroflow's own result objects) are still taken:
-- they are small and finish studies already received.
--
-- How the status is produced: Orthanc 1.10.1 (Debian bookworm, what the local stack runs) answers 0x0000
-- whatever ReceivedInstanceFilter or ReceivedCStoreInstanceFilter return (tested: a filtered instance is
-- dropped silently, which would lose the study), but it answers 0xA700 when the filter raises an error
-- (StoreScp turns the exception into STATUS_STORE_Refused_OutOfResources). So the filter raises.
--
-- Free space is read with `df -Pk` at most every CheckIntervalSeconds (it runs under Orthanc's Lua lock, once
-- per instance otherwise). If df cannot be read the guard lets instances in and says so once: a broken guard
-- must not stop a site. The monitor service measures the same numbers for the NeuroflowIngestRefused alert.

local guard = (GetOrthancConfiguration()["Neuroflow"] or {})["StorageGuard"] or {}
local minimumFree = tonumber(guard["MinimumFreeBytes"]) or 0
local interval = tonumber(guard["CheckIntervalSeconds"]) or 10
local directories = guard["Directories"] or { GetOrthancConfiguration()["StorageDirectory"] or "OrthancStorage" }

local checkedAt = nil
local freeBytes = nil
local refusing = false
local unreadableSaid = false

-- The least free space of the watched directories, in bytes; nil unless df answered for each.
local function ReadFreeBytes()
  local quoted = {}
  for i, directory in ipairs(directories) do
    quoted[i] = "'" .. string.gsub(directory, "'", "'\\''") .. "'"
  end
  local pipe = io.popen("df -Pk " .. table.concat(quoted, " ") .. " 2>/dev/null")
  if pipe == nil then
    return nil
  end
  local text = pipe:read("*a")
  pipe:close()
  -- POSIX format: a header line, then "filesystem 1024-blocks used available capacity mountpoint" per directory.
  local least = nil
  local read = 0
  for available in string.gmatch(text, "\n%S+%s+%d+%s+%d+%s+(%d+)") do
    local bytes = tonumber(available) * 1024
    read = read + 1
    if least == nil or bytes < least then
      least = bytes
    end
  end
  if read < #directories then
    return nil  -- a directory df could not read (missing, or not mounted yet): do not guess
  end
  return least
end

local function Refusing()
  local now = os.time()
  if checkedAt ~= nil and now - checkedAt < interval then
    return refusing
  end
  checkedAt = now
  freeBytes = ReadFreeBytes()
  local was = refusing
  if freeBytes == nil then
    if not unreadableSaid then
      print("neuroflow storage guard: free space of " .. table.concat(directories, ", ")
            .. " unreadable (df); not refusing")
      unreadableSaid = true
    end
    refusing = false
  else
    refusing = freeBytes < minimumFree
  end
  if refusing ~= was then
    if refusing then
      print(string.format("neuroflow storage guard: %.0f bytes free, under the minimum %.0f: refusing C-STORE "
                          .. "(0xA700)", freeBytes, minimumFree))
    else
      print("neuroflow storage guard: free space back over the minimum: accepting C-STORE again")
    end
  end
  return refusing
end

function ReceivedInstanceFilter(dicom, origin, info)
  if minimumFree > 0 and origin["RequestOrigin"] == "DicomProtocol" and Refusing() then
    error("neuroflow storage guard: storage nearly full, C-STORE refused (out of resources)")
  end
  return true
end
