-- Argo CD health of a FineTuneTaskSet (resource.customizations.health.finetune.v-sekai.org_FineTuneTaskSet).
-- Source of argocd-cm-patch.yaml (scripts/gen_manifests.py); tests/integration/test_argocd_health.py
-- runs it in Lua 5.1 (Argo CD's gopher-lua). Each generated FineTuneTask has its own health too.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the set"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local counts = status.counts or {}
local function n(v) if v == nil then return 0 end return v end
local tasks = n(status.tasks)
local failed = n(counts.failed)
local done = n(counts.succeeded) + failed + n(counts.skipped)
local problem = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.status == "False" and problem == nil then
      problem = c.reason .. ": " .. (c.message or "")
    end
  end
end
local summary = tostring(done) .. "/" .. tostring(tasks) .. " tasks done, " .. tostring(failed) .. " failed"
if n(counts.suspended) > 0 and done + n(counts.suspended) == tasks then
  hs.status = "Suspended"
  hs.message = summary .. ", " .. tostring(counts.suspended) .. " suspended"
elseif done < tasks then
  hs.status = "Progressing"
  hs.message = summary
elseif failed > 0 then
  hs.status = "Degraded"
  hs.message = summary
elseif problem ~= nil then
  hs.status = "Degraded"
  hs.message = problem
else
  hs.status = "Healthy"
  hs.message = summary
end
if problem ~= nil and hs.status ~= "Degraded" then
  hs.message = hs.message .. "; " .. problem
end
return hs
