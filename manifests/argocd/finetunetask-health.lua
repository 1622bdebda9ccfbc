-- Argo CD health of a FineTuneTask (resource.customizations.health.finetune.v-sekai.org_FineTuneTask).
-- Source of argocd-cm-patch.yaml (scripts/gen_manifests.py); tests/integration/test_argocd_health.py
-- runs it in Lua 5.1 (Argo CD's gopher-lua) against a status fixture per phase.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the task"
  return hs
end
-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local message = status.message
if message == nil or message == "" then
  message = phase
end
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Skipped" then
  hs.status = "Healthy"
  message = "Skipped: " .. message
else
  hs.status = "Progressing"
  if message ~= phase then
    message = phase .. ": " .. message
  end
end
hs.message = message
return hs
