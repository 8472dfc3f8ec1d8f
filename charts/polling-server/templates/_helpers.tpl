{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "polling-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name; the release name alone when it already contains the chart name. */}}
{{- define "polling-server.fullname" -}}
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

{{- define "polling-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "polling-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: helmsman-cd
{{- end }}

{{- define "polling-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polling-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "polling-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "polling-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}


{{/* Keel annotations, rendered only when keel.enabled: the usual settings, then keel.annotations, which win. */}}
{{- define "polling-server.keelAnnotations" -}}
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

{{- define "polling-server.pvcName" -}}
{{- default (printf "%s-state" (include "polling-server.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* "true" when some repository builds with the given backend: config.builds.backend, or its own `backend`.
Args: list $ backend */}}
{{- define "polling-server.buildsWith" -}}
{{- $root := index . 0 }}{{ $wanted := index . 1 }}
{{- $default := $root.Values.config.builds.backend | default "docker" }}
{{- $found := and (eq $default $wanted) (not $root.Values.config.repositories) }}
{{- range $root.Values.config.repositories }}
{{- if eq (.backend | default $default) $wanted }}{{ $found = true }}{{ end }}
{{- end }}
{{- $found }}
{{- end }}

{{/* One env var from a Secret key; skipped when the Secret name is empty. Args: list NAME secretName key */}}
{{- define "polling-server.secretEnv" -}}
{{- $var := index . 0 }}{{ $secret := index . 1 }}{{ $key := index . 2 }}
{{- if $secret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end }}

{{/* One env var from a Secret key that may be missing (the variable is then unset). Args: list NAME secretName key */}}
{{- define "polling-server.optionalSecretEnv" -}}
{{- $var := index . 0 }}{{ $secret := index . 1 }}{{ $key := index . 2 }}
{{- if $secret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
