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

{{/* Keel annotations, rendered only when keel.enabled: the usual settings, then keel.annotations, which win. */}}
{{- define "helm-api.keelAnnotations" -}}
{{- if .Values.keel.enabled }}
{{- $k := .Values.keel }}
{{- $a := dict "keel.sh/policy" (toString $k.policy) "keel.sh/trigger" (toString $k.trigger) "keel.sh/pollSchedule" (toString $k.pollSchedule) }}
{{- if $k.matchTag }}{{- $_ := set $a "keel.sh/match-tag" "true" }}{{- end }}
{{- if $k.approvals }}{{- $_ := set $a "keel.sh/approvals" (toString $k.approvals) }}{{- end }}
{{- if $k.approvalDeadline }}{{- $_ := set $a "keel.sh/approvalDeadline" (toString $k.approvalDeadline) }}{{- end }}
{{- if $k.notify }}{{- $_ := set $a "keel.sh/notify" (toString $k.notify) }}{{- end }}
{{- range $name, $value := $k.annotations }}{{- $_ := set $a $name (toString $value) }}{{- end }}
{{- toYaml $a }}
{{- end }}
{{- end }}
