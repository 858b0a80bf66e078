{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, 63 characters at most. */}}
{{- define "graft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: the release name when it already contains
the chart name (`helm install graft ...` gives "graft"), else "<release>-graft".
Kept short enough that "<prefix>-operator" fits a 63-character label value.
*/}}
{{- define "graft.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "graft.operator.fullname" -}}
{{- printf "%s-operator" (include "graft.fullname" .) }}
{{- end }}

{{- define "graft.agent.fullname" -}}
{{- printf "%s-agent" (include "graft.fullname" .) }}
{{- end }}

{{/* "graft-0.1.0", as the helm.sh/chart label wants it. */}}
{{- define "graft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods of a component; pass (dict "ctx" $ "component" "agent"). */}}
{{- define "graft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "graft.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
The standard labels of every object; pass (dict "ctx" $ "component" "operator"),
component may be empty for objects that belong to no single component.
*/}}
{{- define "graft.labels" -}}
helm.sh/chart: {{ include "graft.chart" .ctx }}
{{ include "graft.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: graft
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "graft.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "graft.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name must name an existing ServiceAccount when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "graft.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "graft.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name must name an existing ServiceAccount when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from an image value and the chart; pass (dict "ctx" $ "image" .Values.agent.image). */}}
{{- define "graft.image" -}}
{{- $repo := .image.repository }}
{{- with .image.registry }}
{{- $repo = printf "%s/%s" . $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is on whenever more than one operator may run. */}}
{{- define "graft.operator.leaderElection" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicas) 1) }}true{{ end }}
{{- end }}

{{/* The two Prometheus Operator monitor kinds are alternatives, never both. */}}
{{- define "graft.checkMonitors" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: choose one, or Prometheus scrapes every target twice" }}
{{- end }}
{{- end }}
