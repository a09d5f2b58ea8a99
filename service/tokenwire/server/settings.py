"""Every server setting, in one typed object: the only reader of flags and environment.

Each field is a flag (``--max-queue``, built in ``flags.py``) and an environment
variable (``TOKENWIRE_MAX_QUEUE``); a flag wins over the environment. Build it once
in ``cli.py`` and pass it down; tests construct ``Settings(...)`` directly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EngineKind = Literal["simulated", "transformers", "tensorrt-llm"]
ToolCallParser = Literal["hermes", "llama3_json"]
GuidedDecodingBackend = Literal["auto", "llguidance", "xgrammar"]

ENV_PREFIX = "TOKENWIRE_"
# Settings that also read a variable of another project's convention.
EXTRA_ENV = {"otlp_endpoint": ("OTEL_EXPORTER_OTLP_ENDPOINT",)}


class BadSettings(Exception):
    """Settings that cannot work as given, one problem a line: the CLI prints them
    and exits 2. The messages name flags and variables, never a secret's value."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def option(name: str) -> str:
    """How a person sets field ``name``: ``--max-queue (TOKENWIRE_MAX_QUEUE)``."""
    names = " or ".join((f"{ENV_PREFIX}{name.upper()}", *EXTRA_ENV.get(name, ())))
    return f"--{name.replace('_', '-')} ({names})"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
    )

    # Engine and model.
    engine: EngineKind = Field("simulated", description="Engine behind the server.")
    model: str = Field(
        "tokenwire-sim",
        description="Model path or name; for the simulated engine any name.",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer path or name, when not the model's own."
    )
    lora: str = Field(
        "",
        description="LoRA adapters to serve, NAME=PATH: repeat the flag, or separate them "
        "with commas; a request picks one by naming it as its model.",
        json_schema_extra={"repeatable": True},
    )
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code.")
    dtype: str = Field("auto", description="Weights and activations dtype (auto, float16, ...).")
    device: str = Field("auto", description="transformers engine: auto, cpu, cuda or cuda:N.")
    tensor_parallel_size: int = Field(1, ge=1, description="TensorRT-LLM: GPUs per model.")
    trtllm_backend: Literal["pytorch", "tensorrt"] = Field(
        "pytorch", description="TensorRT-LLM: PyTorch backend, or prebuilt TensorRT engines."
    )
    kv_cache_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="TensorRT-LLM: share of free GPU memory for the KV cache."
    )
    guided_decoding_backend: GuidedDecodingBackend = Field(
        "auto",
        description="TensorRT-LLM: grammar engine for structured output and forced tool "
        "calls; auto is llguidance on the PyTorch backend, xgrammar on prebuilt engines.",
    )
    tool_call_parser: ToolCallParser = Field(
        "hermes",
        description="How the model writes tool calls: hermes (<tool_call>{...}</tool_call>, "
        "Qwen, Hermes) or llama3_json (Llama 3.1+ JSON calls).",
    )
    max_batch_size: int | None = Field(None, ge=1, description="Engine: most sequences per step.")
    max_seq_len: int | None = Field(None, ge=1, description="Engine: longest prompt + output.")
    max_num_tokens: int | None = Field(None, ge=1, description="Engine: most tokens per step.")
    sim_ttft_ms: float = Field(
        30.0, ge=0, description="Simulated engine: time to first token in ms (0 = at once)."
    )
    sim_itl_ms: float = Field(
        15.0, ge=0, description="Simulated engine: time between tokens in ms (0 = at once)."
    )
    sim_max_context: int = Field(
        32768, ge=16, description="Simulated engine: context length it claims."
    )
    sim_kv_blocks: int = Field(
        4096,
        ge=1,
        description="Simulated engine: KV-cache blocks of 16 tokens it models; each live "
        "sequence holds blocks for its prompt and completion so far.",
    )

    # Listeners.
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 for every interface."
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 = off.")
    metrics_host: str | None = Field(
        None, min_length=1, description="Address /metrics listens on; default: --host."
    )
    http: bool = Field(
        True, description="Serve the HTTP front door (OpenAI API, /v1/generate, playground)."
    )
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    http_keepalive_s: float = Field(
        15.0, ge=0, description="SSE comment sent after this long without an event; 0 = never."
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    health_port: int = Field(
        0, ge=0, le=65535, description="Plaintext port serving only grpc.health.v1; 0 = none."
    )
    max_connection_age_s: float = Field(
        0, ge=0, description="Close connections after this long (rebalancing); 0 = never."
    )
    max_connection_age_grace_s: float | None = Field(
        None,
        ge=0,
        description="After --max-connection-age-s, how long live streams may run on before "
        "the connection is cut; default: --shutdown-grace-s.",
    )
    keepalive_time_s: float = Field(
        30.0,
        ge=0,
        description="A peer that vanished is found: gRPC pings after this long without "
        "reads, the HTTP door's TCP keepalive probes after this long idle; 0 = never.",
    )
    keepalive_timeout_s: float = Field(
        10.0,
        gt=0,
        description="With --keepalive-time-s: a peer that leaves a ping (gRPC) or its "
        "sent data or keepalive probes (HTTP, TCP_USER_TIMEOUT) unanswered this long is "
        "gone, and its requests are aborted.",
    )

    # Security.
    tls_cert: FilePath | None = Field(None, description="PEM certificate chain: serve TLS.")
    tls_key: FilePath | None = Field(None, description="PEM private key of --tls-cert.")
    tls_client_ca: FilePath | None = Field(
        None, description="PEM CA bundle: require client certificates (mutual TLS)."
    )
    api_key: SecretStr | None = Field(
        None,
        min_length=1,
        description="Bearer token clients must send. Prefer TOKENWIRE_API_KEY or "
        "--api-keys-file: a flag's value shows in the process list.",
    )
    api_keys_file: FilePath | None = Field(
        None, description="File of accepted bearer tokens, one per line; re-read on change."
    )

    # Limits on each request.
    max_concurrent_requests: int = Field(256, ge=1, description="Engine requests run at once.")
    max_queue: int = Field(1024, ge=0, description="Requests waiting for an engine slot.")
    max_tokens_limit: int = Field(8192, ge=1, description="Largest accepted max_tokens.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request omits it.")
    max_prompt_tokens: int = Field(32768, ge=1, description="Most prompt tokens accepted.")
    max_n: int = Field(16, ge=1, description="Largest accepted n.")
    max_stop_strings: int = Field(16, ge=0, description="Most stop strings per request.")
    max_stop_string_length: int = Field(256, ge=1, description="Longest stop string, chars.")
    max_top_logprobs: int = Field(20, ge=0, description="Largest accepted top_logprobs.")
    max_grammar_bytes: int = Field(
        64 * 1024,
        ge=256,
        description="Largest structured-output constraint (JSON schema, regex, grammar, "
        "choices) or tool parameters schema accepted, in bytes.",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request message accepted, and largest Complete answer sent "
        "(one message), in bytes.",
    )

    max_resume_grace_ms: int = Field(
        60_000,
        ge=0,
        description="Longest StreamOptions.resume_grace_ms accepted (a resumable stream's "
        "grace after its client left or it ended); 0 = no resumable streams.",
    )
    resume_request_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Most bytes of messages kept per resumable stream that its client may "
        "not have; a detached stream that needs more is aborted (detached).",
    )
    resume_total_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Most bytes of messages kept for all resumable streams; beyond it the "
        "oldest detached stream is aborted (detached).",
    )

    max_pacing_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="While the event loop runs late, longest pause before a stream whose "
        "engine ran ahead reads it again (fewer, larger messages); 0 = never pause.",
    )

    # Stalls.
    stall_timeout_s: float = Field(
        30.0, ge=0, description="Abort a stream whose client takes nothing this long; 0 = never."
    )
    engine_stall_timeout_s: float = Field(
        120.0, ge=0, description="Abort a request the engine advances not this long; 0 = never."
    )

    # Lifecycle and logs.
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM or Ctrl-C, how long live streams may run on; a second one "
        "ends them at once.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_json: bool = Field(False, description="One JSON object per log line.")
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "otlp_endpoint", "TOKENWIRE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="OTLP/gRPC endpoint for traces (also OTEL_EXPORTER_OTLP_ENDPOINT).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # Messages name the options, never a value: one of them may be a secret.
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"{option('default_max_tokens')} must not exceed {option('max_tokens_limit')}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"{option('tls_cert')} and {option('tls_key')} go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(f"{option('tls_client_ca')} needs --tls-cert and --tls-key")
        self.lora_adapters()  # refuses a malformed list now, not at the first request
        return self

    def lora_adapters(self) -> dict[str, str]:
        """The ``lora`` adapters, name to path, in the order given."""
        adapters: dict[str, str] = {}
        for item in (part.strip() for part in self.lora.split(",")):
            if not item:
                continue
            name, sep, path = (s.strip() for s in item.partition("="))
            if not sep or not name or not path:
                raise ValueError(f"{option('lora')}: each adapter is NAME=PATH")
            if name in adapters or name == self.model:
                raise ValueError(
                    f"{option('lora')}: adapter names must be unique and differ from the model's"
                )
            adapters[name] = path
        return adapters
