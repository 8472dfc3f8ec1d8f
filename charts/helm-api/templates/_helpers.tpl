{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "helm-api.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name; the release name alone when it already contains the chart name. */}}
{{- define "helm-api.fullname" -}}
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

{{- define "helm-api.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "helm-api.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: helmsman-cd
{{- end }}

{{- define "helm-api.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helm-api.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helm-api.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helm-api.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the CronJob the API instantiates (and of its Role). */}}
{{- define "helm-api.targetNamespace" -}}
{{- default .Release.Namespace .Values.targetNamespace }}
{{- end }}

{{/* Keel annotations, rendered only when keel.enabled. */}}
{{- define "helm-api.keelAnnotations" -}}
{{- if .Values.keel.enabled }}
keel.sh/policy: {{ .Values.keel.policy | quote }}
keel.sh/trigger: {{ .Values.keel.trigger | quote }}
keel.sh/pollSchedule: {{ .Values.keel.pollSchedule | quote }}
{{- if .Values.keel.matchTag }}
keel.sh/match-tag: "true"
{{- end }}
{{- end }}
{{- end }}
