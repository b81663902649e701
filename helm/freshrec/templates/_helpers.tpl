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

{{/* Labels of the update job's pods (distinct from Triton's: the Service never routes to them). */}}
{{- define "freshrec.updateSelectorLabels" -}}
app.kubernetes.io/name: {{ include "freshrec.name" . }}-update
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of the bundled Redis pod (distinct from Triton's, so Services never mix them). */}}
{{- define "freshrec.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "freshrec.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on the bundled Redis objects. */}}
{{- define "freshrec.redisLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "freshrec.redisSelectorLabels" . }}
app.kubernetes.io/component: state-store
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the bundled Redis StatefulSet and Service. */}}
{{- define "freshrec.redisName" -}}
{{- printf "%s-redis" (include "freshrec.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the Secret holding Triton's admin key (the existing one, or the chart's). */}}
{{- define "freshrec.adminSecretName" -}}
{{- .Values.triton.adminKey.existingSecret | default (printf "%s-admin" (include "freshrec.fullname" .)) }}
{{- end }}

{{/* Triton image reference; the tag defaults to the chart's appVersion (the Containerfile's cpu
target), `<appVersion>-gpu` for the gpu profile (its gpu target). */}}
{{- define "freshrec.image" -}}
{{- $tag := .Chart.AppVersion }}
{{- if eq .Values.resourceProfile "gpu" }}{{ $tag = printf "%s-gpu" .Chart.AppVersion }}{{ end }}
{{- printf "%s:%s" (required "image.repository is required" .Values.image.repository) (.Values.image.tag | default $tag) }}
{{- end }}

{{/* Seconds Triton drains in-flight requests after SIGTERM (--exit-timeout-secs). */}}
{{- define "freshrec.exitTimeoutSecs" -}}
{{- int .Values.triton.exitTimeoutSeconds }}
{{- end }}

{{/* terminationGracePeriodSeconds, refused unless it covers the preStop sleep plus Triton's drain. */}}
{{- define "freshrec.terminationGracePeriodSeconds" -}}
{{- $exit := include "freshrec.exitTimeoutSecs" . | atoi }}
{{- $sleep := int .Values.preStopSleepSeconds }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if le $grace (add $sleep $exit) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + tritonserver's --exit-timeout-secs (%d), or pods are killed mid-drain" $grace $sleep $exit) }}
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

{{/* Refuse extra tritonserver args that would override what the chart owns. */}}
{{- define "freshrec.checkExtraArgs" -}}
{{- range .Values.triton.extraArgs }}
{{- $arg := toString . }}
{{- range list "--model-control-mode" "--load-model" "--grpc-restricted-protocol" "--http-restricted-api" "--exit-timeout-secs" "--model-repository" "--http-port" "--grpc-port" "--metrics-port" "--http-address" "--grpc-address" "--metrics-address" "--strict-readiness" }}
{{- if hasPrefix . $arg }}
{{- fail (printf "triton.extraArgs may not set %s (the chart owns it): %s" . $arg) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the model repository comes from; refuses unknown sources and inconsistent settings. */}}
{{- define "freshrec.modelSource" -}}
{{- $src := .Values.modelRepository.source }}
{{- if not (has $src (list "pvc" "image" "initContainer")) }}
{{- fail (printf "modelRepository.source %q must be one of pvc, image, initContainer" $src) }}
{{- end }}
{{- if and .Values.tensorrt.enabled (ne .Values.resourceProfile "gpu") }}
{{- fail "tensorrt.enabled builds plans on the target GPU: it needs resourceProfile=gpu" }}
{{- end }}
{{- $src }}
{{- end }}

{{/* True ("true") when the repository is a writable emptyDir filled by init containers, else "". */}}
{{- define "freshrec.modelsInEmptyDir" -}}
{{- if or (ne (include "freshrec.modelSource" .) "pvc") .Values.tensorrt.enabled }}true{{- end }}
{{- end }}

{{/* The state store: refuses zero or two sources. Returns "bundled" or "external". */}}
{{- define "freshrec.stateMode" -}}
{{- $external := or .Values.state.redisUrl .Values.state.existingSecret }}
{{- if and .Values.redis.enabled $external }}
{{- fail "set either redis.enabled=true (bundled Redis) or state.redisUrl/state.existingSecret (external Redis), not both" }}
{{- end }}
{{- if not (or .Values.redis.enabled $external) }}
{{- fail "a state store is required: set redis.enabled=true or state.redisUrl (replicas must share users' state)" }}
{{- end }}
{{- if .Values.redis.enabled }}bundled{{- else }}external{{- end }}
{{- end }}

{{/* Port of the external Redis, read from state.redisUrl (default 6379). */}}
{{- define "freshrec.externalRedisPort" -}}
{{- $port := "" }}
{{- if .Values.state.redisUrl }}
{{- $host := (urlParse .Values.state.redisUrl).host }}
{{- if contains ":" $host }}
{{- $port = last (splitList ":" $host) }}
{{- else }}
{{- $port = "6379" }}
{{- end }}
{{- else }}
{{- $port = toString .Values.networkPolicy.externalRedisPort }}
{{- end }}
{{- $port }}
{{- end }}

{{/* Container securityContext shared by every container: no privilege, no capabilities, read-only root. */}}
{{- define "freshrec.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
