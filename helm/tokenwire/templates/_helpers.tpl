{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "tokenwire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: the release name, plus the chart name
unless the release name already contains it.
*/}}
{{- define "tokenwire.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "tokenwire.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource of the release; `tokenwire.labels` adds the component.
*/}}
{{- define "tokenwire.baseLabels" -}}
helm.sh/chart: {{ include "tokenwire.chart" . }}
app.kubernetes.io/name: {{ include "tokenwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the server's resources.
*/}}
{{- define "tokenwire.labels" -}}
{{ include "tokenwire.baseLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Labels that select the server pods (immutable in a Deployment: keep them short).
*/}}
{{- define "tokenwire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Name of the pods' ServiceAccount.
*/}}
{{- define "tokenwire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenwire.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Server image: repository@digest when a digest is set, else repository:tag,
where an empty tag means appVersion, "-cpu" suffixed on CPU-only pods.
*/}}
{{- define "tokenwire.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else if $img.tag }}
{{- printf "%s:%s" $img.repository $img.tag }}
{{- else }}
{{- printf "%s:%s%s" $img.repository .Chart.AppVersion (ternary "" "-cpu" (gt (int .Values.gpu.count) 0)) }}
{{- end }}
{{- end }}

{{/*
"true" when the gRPC port needs TLS or an API key, which Kubernetes probes
cannot give: then the plaintext health-only port is opened for them.
*/}}
{{- define "tokenwire.guarded" -}}
{{- if or .Values.tls.enabled .Values.auth.enabled }}true{{ end }}
{{- end }}

{{/*
Container port the gRPC probes ask.
*/}}
{{- define "tokenwire.probePort" -}}
{{- if include "tokenwire.guarded" . }}{{ .Values.server.healthPort }}{{ else }}{{ .Values.server.port }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep, then the server's drain
(shutdownGraceS, rounded up), then a margin to abort the rest and close the
engine. Kubernetes kills the pod when it runs out.
*/}}
{{- define "tokenwire.terminationGracePeriodSeconds" -}}
{{- add (int .Values.lifecycle.preStopSleepSeconds) (int (ceil .Values.server.shutdownGraceS)) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
A number as an environment variable value: integers without the exponent
Go would print for float64 values of a million and more.
*/}}
{{- define "tokenwire.number" -}}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
appProtocol of the gRPC Service port.
*/}}
{{- define "tokenwire.appProtocol" -}}
{{- default (ternary "https" "kubernetes.io/h2c" .Values.tls.enabled) .Values.service.appProtocol }}
{{- end }}

{{/*
appProtocol of the HTTP Service port: the HTTP door serves HTTPS with the
gRPC port's TLS files.
*/}}
{{- define "tokenwire.httpAppProtocol" -}}
{{- default (ternary "https" "http" .Values.tls.enabled) .Values.service.httpAppProtocol }}
{{- end }}

{{/*
Combinations of values the schema cannot rule out; rendering fails with a reason.
*/}}
{{- define "tokenwire.validate" -}}
{{- if and (eq .Values.engine.kind "tensorrt-llm") (lt (int .Values.gpu.count) 1) }}
{{- fail "engine.kind tensorrt-llm needs GPUs: set gpu.count" }}
{{- end }}
{{- if and (eq .Values.engine.kind "tensorrt-llm") (gt (int .Values.engine.tensorParallelSize) (int .Values.gpu.count)) }}
{{- fail "engine.tensorParallelSize must not exceed gpu.count" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and .Values.tls.clientCASecretName (not .Values.tls.enabled) }}
{{- fail "tls.clientCASecretName (mutual TLS) needs tls.enabled" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.existingSecret (a Secret with one API key per line)" }}
{{- end }}
{{- $storage := .Values.modelStorage }}
{{- if and (eq $storage.type "existingClaim") (not $storage.existingClaim) }}
{{- fail "modelStorage.type existingClaim needs modelStorage.existingClaim" }}
{{- end }}
{{- if and (eq $storage.type "hostPath") (not $storage.hostPath.path) }}
{{- fail "modelStorage.type hostPath needs modelStorage.hostPath.path" }}
{{- end }}
{{- if and $storage.init.enabled (eq $storage.type "none") }}
{{- fail "modelStorage.init needs a model volume: set modelStorage.type" }}
{{- end }}
{{- if gt (int .Values.limits.defaultMaxTokens) (int .Values.limits.maxTokensLimit) }}
{{- fail "limits.defaultMaxTokens must not exceed limits.maxTokensLimit" }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if and $hpa.enabled (kindIs "invalid" $hpa.targetCPUUtilizationPercentage) (not $hpa.queueDepth.enabled) }}
{{- fail "autoscaling needs a metric: targetCPUUtilizationPercentage or queueDepth.enabled" }}
{{- end }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- $pool := .Values.inferencePool }}
{{- if $pool.enabled }}
{{- if not $pool.endpointPickerRef.name }}
{{- fail "inferencePool.enabled needs inferencePool.endpointPickerRef.name (the endpoint picker's Service, e.g. <router release>-epp)" }}
{{- end }}
{{- if and (eq $pool.targetPort "http") (not .Values.http.enabled) }}
{{- fail "inferencePool.targetPort http needs http.enabled: the pool would send requests to a door that is off (or set inferencePool.targetPort grpc)" }}
{{- end }}
{{- if and (kindIs "invalid" $pool.endpointPickerRef.port) (eq (default "Service" $pool.endpointPickerRef.kind) "Service") }}
{{- fail "inferencePool.endpointPickerRef.port is required when the endpoint picker is a Service" }}
{{- end }}
{{- end }}
{{- if and (include "tokenwire.guarded" .) (eq (int .Values.server.healthPort) (int .Values.server.port)) }}
{{- fail "server.healthPort must differ from server.port" }}
{{- end }}
{{- if .Values.http.enabled }}
{{- $taken := list (int .Values.server.port) (int .Values.server.metricsPort) }}
{{- if include "tokenwire.guarded" . }}
{{- $taken = append $taken (int .Values.server.healthPort) }}
{{- end }}
{{- if has (int .Values.http.port) $taken }}
{{- fail "http.port must differ from server.port, server.metricsPort and server.healthPort" }}
{{- end }}
{{- end }}
{{- end }}
