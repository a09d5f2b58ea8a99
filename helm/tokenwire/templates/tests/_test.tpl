{{/*
The test pod's container: grpcurl's alpine image (grpcurl and a shell), locked down.
*/}}
{{- define "tokenwire.testContainer" -}}
image: {{ printf "%s:%s" .Values.tests.image.repository .Values.tests.image.tag }}
imagePullPolicy: {{ .Values.tests.image.pullPolicy }}
command: ["/bin/sh", "-ec"]
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop:
      - ALL
resources:
  requests:
    cpu: 10m
    memory: 32Mi
  limits:
    cpu: 200m
    memory: 64Mi
{{- if include "tokenwire.testVolumes" . }}
volumeMounts:
  {{- if and .Values.tls.enabled (not .Values.tests.insecureSkipVerify) }}
  - name: server-ca
    mountPath: /etc/tokenwire/server-ca
    readOnly: true
  {{- end }}
  {{- if and .Values.tls.enabled .Values.tls.clientCASecretName }}
  - name: client-cert
    mountPath: /etc/tokenwire/client-cert
    readOnly: true
  {{- end }}
  {{- if .Values.auth.enabled }}
  - name: api-keys
    mountPath: /etc/tokenwire/auth
    readOnly: true
  {{- end }}
{{- end }}
{{- end }}

{{/*
Shell lines that leave grpcurl's connection flags in "$@": plaintext or TLS
(verified against the server's CA unless told not to), a client certificate
for mutual TLS, and the first API key of the keys file.
*/}}
{{- define "tokenwire.testPreamble" -}}
{{- if not .Values.tls.enabled }}
set -- -plaintext
{{- else if .Values.tests.insecureSkipVerify }}
set -- -insecure
{{- else }}
set -- -cacert /etc/tokenwire/server-ca/ca.crt
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.clientCASecretName }}
set -- "$@" -cert /etc/tokenwire/client-cert/tls.crt -key /etc/tokenwire/client-cert/tls.key
{{- end }}
{{- if .Values.auth.enabled }}
key=$(awk '!/^#/ && NF {print $1; exit}' /etc/tokenwire/auth/api-keys)
set -- "$@" -H "authorization: Bearer $key"
{{- end }}
{{- end }}

{{/*
"true" when the test pod mounts anything: the server's CA, a client
certificate or the API keys.
*/}}
{{- define "tokenwire.testVolumes" -}}
{{- if or (and .Values.tls.enabled (not .Values.tests.insecureSkipVerify)) (and .Values.tls.enabled .Values.tls.clientCASecretName) .Values.auth.enabled }}true{{ end }}
{{- end }}
