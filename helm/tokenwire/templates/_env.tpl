{{/*
Engine and model settings as TOKENWIRE_* variables (docs/operations.md,
"Engine and model"). Unset (null or empty) values are left to the server.
*/}}
{{- define "tokenwire.engineEnv" -}}
{{- $e := .Values.engine -}}
- name: TOKENWIRE_ENGINE
  value: {{ $e.kind | quote }}
- name: TOKENWIRE_MODEL
  value: {{ $e.model | quote }}
{{- with $e.tokenizer }}
- name: TOKENWIRE_TOKENIZER
  value: {{ . | quote }}
{{- end }}
- name: TOKENWIRE_TRUST_REMOTE_CODE
  value: {{ $e.trustRemoteCode | quote }}
- name: TOKENWIRE_DTYPE
  value: {{ $e.dtype | quote }}
- name: TOKENWIRE_DEVICE
  value: {{ $e.device | quote }}
- name: TOKENWIRE_TENSOR_PARALLEL_SIZE
  value: {{ include "tokenwire.number" $e.tensorParallelSize | quote }}
- name: TOKENWIRE_TRTLLM_BACKEND
  value: {{ $e.trtllmBackend | quote }}
{{- range $name, $value := dict "KV_CACHE_MEMORY_FRACTION" $e.kvCacheMemoryFraction "MAX_BATCH_SIZE" $e.maxBatchSize "MAX_SEQ_LEN" $e.maxSeqLen "MAX_NUM_TOKENS" $e.maxNumTokens }}
{{- if not (kindIs "invalid" $value) }}
- name: TOKENWIRE_{{ $name }}
  value: {{ include "tokenwire.number" $value | quote }}
{{- end }}
{{- end }}
{{- if eq $e.kind "simulated" }}
- name: TOKENWIRE_SIM_TTFT_MS
  value: {{ include "tokenwire.number" $e.simulator.ttftMs | quote }}
- name: TOKENWIRE_SIM_ITL_MS
  value: {{ include "tokenwire.number" $e.simulator.itlMs | quote }}
{{- end }}
{{- end }}

{{/*
Per-request limits as TOKENWIRE_* variables (docs/operations.md, "Limits").
*/}}
{{- define "tokenwire.limitsEnv" -}}
{{- $l := .Values.limits -}}
- name: TOKENWIRE_MAX_CONCURRENT_REQUESTS
  value: {{ include "tokenwire.number" $l.maxConcurrentRequests | quote }}
- name: TOKENWIRE_MAX_QUEUE
  value: {{ include "tokenwire.number" $l.maxQueue | quote }}
- name: TOKENWIRE_MAX_TOKENS_LIMIT
  value: {{ include "tokenwire.number" $l.maxTokensLimit | quote }}
- name: TOKENWIRE_DEFAULT_MAX_TOKENS
  value: {{ include "tokenwire.number" $l.defaultMaxTokens | quote }}
- name: TOKENWIRE_MAX_PROMPT_TOKENS
  value: {{ include "tokenwire.number" $l.maxPromptTokens | quote }}
- name: TOKENWIRE_MAX_MESSAGE_BYTES
  value: {{ include "tokenwire.number" $l.maxMessageBytes | quote }}
- name: TOKENWIRE_STALL_TIMEOUT_S
  value: {{ include "tokenwire.number" $l.stallTimeoutS | quote }}
- name: TOKENWIRE_ENGINE_STALL_TIMEOUT_S
  value: {{ include "tokenwire.number" $l.engineStallTimeoutS | quote }}
{{- end }}
