{{/* Chart name, overridable. */}}
{{- define "tokenmint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name alone if it already contains the chart name. */}}
{{- define "tokenmint.fullname" -}}
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

{{/* Labels that select the operator's pods; never change after install (selectors are immutable). */}}
{{- define "tokenmint.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenmint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "tokenmint.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenmint.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: tokenmint
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokenmint.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenmint.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
A RoleBinding of the operator's ServiceAccount to the Role of the same name in `namespace`, or with
namespace "" a ClusterRoleBinding to the ClusterRole of that name. Called as
  include "tokenmint.bindServiceAccount" (list $ name namespace)
*/}}
{{- define "tokenmint.bindServiceAccount" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $namespace := index . 2 }}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $namespace }}RoleBinding{{ else }}ClusterRoleBinding{{ end }}
metadata:
  name: {{ $name }}
  {{- with $namespace }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "tokenmint.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ if $namespace }}Role{{ else }}ClusterRole{{ end }}
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "tokenmint.serviceAccountName" $root }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}

{{- define "tokenmint.leaseName" -}}
{{- default (printf "%s-leader" (include "tokenmint.fullname" .) | trunc 63 | trimSuffix "-") .Values.leaderElection.leaseName }}
{{- end }}

{{- define "tokenmint.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The operator's rights over ApiTokens, their Secrets and Events: exactly the calls
src/controller/ makes (tests/install.rs proves they suffice and that more is denied).
- apitokens: list and watch (the informer); no get, no update, no delete: the spec is the user's.
- apitokens/status: patch (server-side apply of status).
- secrets: list and watch (informer, label-selected), get (re-read after a conflict),
  create (issue), patch (server-side apply on rotation), delete (revocation, expiry).
- events.k8s.io events: create, patch (kube-runtime's Recorder creates, then patches repeats).
*/}}
{{- define "tokenmint.rules" -}}
- apiGroups: ["tokenmint.dev"]
  resources: ["apitokens"]
  verbs: ["list", "watch"]
- apiGroups: ["tokenmint.dev"]
  resources: ["apitokens/status"]
  verbs: ["patch"]
- apiGroups: ["tokenmint.dev"]
  resources: ["apitokenverifiers"]
  verbs: ["list", "watch"]
- apiGroups: ["tokenmint.dev"]
  resources: ["apitokenverifiers/status"]
  verbs: ["patch"]
{{- if not .Values.watchNamespace }}
# Namespace labels, for verifiers' trust.namespaceSelector (metadata only).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.consumers.enabled }}
# Consumers (spec.consumers): read a named workload, set tokenmint's pod-template annotation on it
# (a restart), and watch that one workload by name until its rollout ends.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
