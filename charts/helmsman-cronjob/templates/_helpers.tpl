{{- define "helmsman-cronjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Kept to 52 characters: the CronJob controller appends an 11-character suffix to Job names. */}}
{{- define "helmsman-cronjob.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "helmsman-cronjob.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "helmsman-cronjob.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: helmsman-cd
{{- end }}

{{- define "helmsman-cronjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helmsman-cronjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helmsman-cronjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helmsman-cronjob.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Desired state file names in the order helmsman reads them. */}}
{{- define "helmsman-cronjob.dssOrder" -}}
{{- if .Values.dss.order }}
{{- toJson .Values.dss.order }}
{{- else }}
{{- keys .Values.dss.files | sortAlpha | toJson }}
{{- end }}
{{- end }}
