"""tokenwire's benchmark harness: figures as ratios to baselines measured in the same run.

    make bench                       # every scenario, full sizes (under 10 minutes)
    make bench SCENARIOS=saturation  # some, by name: throughput saturation latency cancel memory
    make bench SCENARIOS=constraints # by name only: structured output and tool calls per token
    tests/bench/test_smoke.py: every scenario, tiny sizes, into a temporary folder

Processes (all on 127.0.0.1, each its own interpreter, sharing the machine's cores):

    orchestrator (cli.py, scenarios.py)   starts servers, samples their RSS, writes the report
    ├── tokenwire-server                  the system under test, simulated engine: its gRPC door
    ├── tokenwire-server                  the same, measured on its HTTP door (SSE): "http"
    ├── bare_grpc.py                      baseline (a): the bare grpc.aio transport ceiling
    ├── sse_peer.py                       baseline (b): FastAPI SSE, as vLLM / trtllm-serve stream
    ├── worker.py                         the load generator (grpc.aio and aiohttp on uvloop)
    └── worker.py                         a second one, SIGSTOPped: the slow readers
"""
