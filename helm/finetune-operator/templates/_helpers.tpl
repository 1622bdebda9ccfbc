{{/*
Names, labels and the operator's RBAC rules: the one place each is defined.
*/}}

{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of namespaced objects; the release name alone when it already holds the chart name. */}}
{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped names must not collide between releases in different namespaces. */}}
{{- define "finetune-operator.clusterName" -}}
{{- printf "%s-%s" (include "finetune-operator.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "finetune-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Rules the operator needs in every namespace it serves: a ClusterRole in cluster mode, a Role per
watched namespace otherwise. Exactly the API calls the operator makes; each verb says why.
tests/integration/test_helm.py pins this table.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
- apiGroups: [finetune.v-sekai.org]
  resources: [finetunetasks]
  # get/list/watch: Kopf's watch stream, and a set's check that a name is free; patch: Kopf's
  # finalizer and progress annotations, and a set's server-side apply of the tasks it generates
  # (create: the apiserver also asks for it when that apply makes a new task); delete: a task
  # whose entry left its FineTuneTaskSet.
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [finetune.v-sekai.org]
  resources: [finetunetasks/status]
  # patch: phase, conditions, metrics through the status subresource (merge patches only).
  verbs: [patch]
- apiGroups: [finetune.v-sekai.org]
  resources: [finetunetasksets]
  # list/watch: Kopf's watch stream; get: a set's roll-up when one of its tasks changes;
  # patch: Kopf's finalizer (the resync timer) and progress annotations.
  verbs: [get, list, watch, patch]
- apiGroups: [finetune.v-sekai.org]
  resources: [finetunetasksets/status]
  # patch: counts, improvements, failed tasks and conditions of a set (merge patches).
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  # create: one trainer Job per run; get/list/watch: follow it; patch: suspend/resume it
  # (spec.suspend); delete: remove a superseded run's Job.
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [configmaps]
  # create: the run's rendered Axolotl config (a 409 on a retry counts as created; it is never
  # read back); delete: superseded runs.
  verbs: [create, delete]
- apiGroups: [""]
  resources: [services]
  # create: the headless Service the pods of a multi-node run meet through (owned by the task,
  # so garbage-collected with it); delete: a superseded multi-node run's.
  verbs: [create, delete]
- apiGroups: [""]
  resources: [secrets]
  # get: the task's S3 credentials (spec.storage.credentialsSecret) for data preparation. No list/watch.
  verbs: [get]
- apiGroups: [""]
  resources: [pods]
  # list: the trainer pods of a Job (by job-name label) to read their termination message.
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  # create: Kopf and the operator post core/v1 events on tasks.
  verbs: [create]
{{- end }}

{{/*
Cluster-scoped rules Kopf itself needs, only in cluster mode (see docs/install.md). No
`namespaces` grant: a cluster-wide Kopf (1.45) never reads namespaces (its namespace observer
only lists them for namespace-scoped operators, which get a 403 and use the listed names), and
the e2e tests record no such call.
*/}}
{{- define "finetune-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  # list/watch: Kopf notices CRD changes at runtime (it finds the FineTuneTask resource through
  # API discovery, /apis, which needs no grant; it never reads one CRD by name).
  verbs: [list, watch]
{{- end }}
