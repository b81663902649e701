{{/*
Named templates shared by the chart's manifests: names, labels, and the checks on values that
must agree with each other.
*/}}

{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "freshrec.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name for the Deployment and Service; the release name alone if it already contains the chart name. */}}
{{- define "freshrec.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the pods; never change them on an installed release (selectors are immutable). */}}
{{- define "freshrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "freshrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "freshrec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "freshrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Triton's --exit-timeout-secs from triton.args, or its default (30) when the flag is absent. */}}
{{- define "freshrec.exitTimeoutSecs" -}}
{{- $secs := 30 }}
{{- range .Values.triton.args }}
{{- if hasPrefix "--exit-timeout-secs=" . }}
{{- $secs = trimPrefix "--exit-timeout-secs=" . | atoi }}
{{- end }}
{{- end }}
{{- $secs }}
{{- end }}

{{/* terminationGracePeriodSeconds, refused unless it leaves Triton time to drain. */}}
{{- define "freshrec.terminationGracePeriodSeconds" -}}
{{- $exit := include "freshrec.exitTimeoutSecs" . | atoi }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if le $grace $exit }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed tritonserver's --exit-timeout-secs (%d), or pods are killed mid-drain" $grace $exit) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* The container's resources: the entry of resourceProfiles named by resourceProfile. */}}
{{- define "freshrec.resources" -}}
{{- $profile := index .Values.resourceProfiles .Values.resourceProfile }}
{{- if not $profile }}
{{- fail (printf "resourceProfile %q is not a key of resourceProfiles (%s)" .Values.resourceProfile (keys .Values.resourceProfiles | sortAlpha | join ", ")) }}
{{- end }}
{{- toYaml $profile }}
{{- end }}
