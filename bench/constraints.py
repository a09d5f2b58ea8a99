"""The constraints scenario: what structured output and tool calls cost per token.

    summary = constraints(sizes, worker)   # one tokenwire server, its gRPC door
    summary.workloads                      # per workload: tokens/s, server CPU per token, vs plain

One tokenwire server on the simulator, the engine on demand (``--sim-ttft-ms 0
--sim-itl-ms 0``), so that the server's CPU, not the engine's clock, sets the
pace; the same closed-loop load as the throughput scenario, at one concurrency,
every workload of ``workloads.py`` in turn (the order rotates every repetition,
as the other scenarios interleave their servers). The simulator samples a
constrained answer among the tokens an llguidance grammar allows, in the server's
process: its CPU per token is what a constraint costs on this front end. Then,
one request at a time, first tokens with a schema new to the server against one
it has compiled: the compile cost, once per schema.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .procs import BenchError, Worker, servers
from .records import FirstTokens, SaturationSample, StreamSpec, Tally
from .scenarios import MANY, log, wait_idle
from .sizes import Sizes
from .stats import median, quantile, ratio
from .summary import us_per
from .workloads import WORKLOADS

BASELINE = "plain"
TOOLS_BASELINE = "tools_none"  # the tool workloads' own baseline: the same prompt, no parser
SEED_TRIES_PER_SEED = 8  # the simulator calls for about half its seeds: ample


@dataclass(slots=True)
class WorkloadSample:
    """One workload's window, and how its streams ended (all of them, the window's or not)."""

    workload: str
    window: SaturationSample
    tally: Tally


@dataclass(slots=True)
class WorkloadFigures:
    """One workload over the repetitions: medians; the ratios are paired by repetition."""

    workload: str
    description: str
    repetitions: int
    tokens_per_s: float
    server_us_per_token: float
    client_us_per_token: float
    cpu_vs_plain: float  # server CPU per token against plain text's in the same repetition
    cpu_vs_plain_each: list[float]  # that ratio in each repetition: how much it moved
    added_us_per_token: float  # server CPU per token minus plain text's, same repetition
    rate_vs_plain: float  # tokens/s against plain text's in the same repetition
    tokens_per_stream: float  # of the streams that finished
    streams_finished: int
    tool_call_share: float  # of the streams that finished, those that made a call
    finish: dict[str, int]
    other_cpu_share: float
    errors: int


@dataclass(slots=True)
class FirstTokenFigures:
    """Time to first token, one request at a time: medians and 90th percentiles, in ms."""

    rounds: int
    plain_p50_ms: float
    cached_p50_ms: float
    fresh_p50_ms: float
    plain_p90_ms: float
    cached_p90_ms: float
    fresh_p90_ms: float
    compile_ms: float  # a new schema's first token minus a cached one's (medians)


@dataclass(slots=True)
class ConstraintsSummary:
    streams: int = 0
    max_tokens: int = 0
    seeds: list[int] = field(default_factory=list)
    samples: list[WorkloadSample] = field(default_factory=list)
    workloads: list[WorkloadFigures] = field(default_factory=list)
    # The tool workloads against tools in the prompt with tool_choice "none", in us/token.
    parser_us_per_token: float = math.nan  # auto answered as text: the parser alone
    forced_us_per_token: float = math.nan  # required: the grammar and the parser
    first: FirstTokenFigures | None = None
    first_raw: FirstTokens = field(default_factory=FirstTokens)

    def figures(self, workload: str) -> WorkloadFigures | None:
        return next((w for w in self.workloads if w.workload == workload), None)


def constraints(sizes: Sizes, worker: Worker) -> ConstraintsSummary:
    """Every workload, interleaved over the repetitions, then the first-token probe."""
    flags = ["--sim-ttft-ms=0", "--sim-itl-ms=0", *MANY]
    budget = sizes.constraint_max_tokens
    timeout = sizes.constraint_warmup_s + sizes.constraint_window_s + 60.0
    samples: list[WorkloadSample] = []
    with servers({"tokenwire": flags}) as running:
        server = running["tokenwire"]
        target = server.target
        seeds: list[int] = worker.call(
            "text_seeds",
            120.0,
            target=target,
            spec=StreamSpec(budget, 1, "tools_auto_text"),
            want=sizes.constraint_seeds,
            tries=sizes.constraint_seeds * SEED_TRIES_PER_SEED,
        )
        if not seeds:
            raise BenchError('the server called a tool for every seed under tool_choice "auto"')
        names = list(WORKLOADS)
        for rep in range(sizes.repetitions):
            shift = rep % len(names)
            for name in [*names[shift:], *names[:shift]]:
                raw = worker.call(
                    "saturate",
                    timeout,
                    target=target,
                    spec=StreamSpec(budget, 1, name, tuple(seeds)),
                    streams=sizes.constraint_streams,
                    warmup_s=sizes.constraint_warmup_s,
                    window_s=sizes.constraint_window_s,
                )
                window = SaturationSample(**raw)
                window.repetition = rep
                tallies = worker.call("tally", 30.0, target=target)
                sample = WorkloadSample(name, window, Tally(**tallies.get(name, {})))
                samples.append(sample)
                log(f"constraints {rep + 1}/{sizes.repetitions} {_describe(sample)}")
                wait_idle(server)
        first = FirstTokens(
            **worker.call(
                "first_tokens",
                60.0 + sizes.compile_rounds * 10.0,
                target=target,
                max_tokens=1,
                rounds=sizes.compile_rounds,
            )
        )
        worker.call("close", 30.0)
    return summarize(sizes, seeds, samples, first)


def _describe(s: WorkloadSample) -> str:
    w, t = s.window, s.tally
    return (
        f"{s.workload:15} {w.tokens_per_s:9,.0f} tokens/s, server "
        f"{us_per(w.server_cpu_s, w.tokens):6.1f} us/token, "
        f"{ratio(t.tokens, t.streams):5.1f} tokens/stream, calls in {t.with_tool_calls}"
        f"/{t.streams} streams, others {w.other_cpu_s / w.window_s:4.0%} CPU"
        + (f", {w.errors} errors ({w.first_error})" if w.errors else "")
    )


def summarize(
    sizes: Sizes, seeds: Sequence[int], samples: Sequence[WorkloadSample], first: FirstTokens
) -> ConstraintsSummary:
    by_rep = {(s.workload, s.window.repetition): s.window for s in samples}

    def paired(name: str, base: str, figure: str) -> list[tuple[float, float]]:
        pairs = []
        for (workload, rep), window in by_rep.items():
            other = by_rep.get((base, rep))
            if workload == name and other is not None:
                pairs.append((_value(window, figure), _value(other, figure)))
        return pairs

    def added(name: str, base: str) -> float:
        return median([a - b for a, b in paired(name, base, "us_per_token")])

    def vs_plain(name: str, figure: str) -> list[float]:
        return [ratio(a, b) for a, b in paired(name, BASELINE, figure)]

    figures = []
    for name, description in WORKLOADS.items():
        mine = [s for s in samples if s.workload == name]
        if not mine:
            continue
        tally = Tally()
        for s in mine:
            tally.add(s.tally)
        windows = [s.window for s in mine]
        figures.append(
            WorkloadFigures(
                workload=name,
                description=description,
                repetitions=len(mine),
                tokens_per_s=median([w.tokens_per_s for w in windows]),
                server_us_per_token=median([_value(w, "us_per_token") for w in windows]),
                client_us_per_token=median([us_per(w.client_cpu_s, w.tokens) for w in windows]),
                cpu_vs_plain=median(vs_plain(name, "us_per_token")),
                cpu_vs_plain_each=vs_plain(name, "us_per_token"),
                added_us_per_token=added(name, BASELINE),
                rate_vs_plain=median(vs_plain(name, "rate")),
                tokens_per_stream=ratio(tally.tokens, tally.streams),
                streams_finished=tally.streams,
                tool_call_share=ratio(tally.with_tool_calls, tally.streams),
                finish=dict(sorted(tally.finish.items())),
                other_cpu_share=median([w.other_cpu_s / w.window_s for w in windows]),
                errors=sum(w.errors for w in windows),
            )
        )
    return ConstraintsSummary(
        streams=sizes.constraint_streams,
        max_tokens=sizes.constraint_max_tokens,
        seeds=list(seeds),
        samples=list(samples),
        workloads=figures,
        parser_us_per_token=added("tools_auto_text", TOOLS_BASELINE),
        forced_us_per_token=added("tools_required", TOOLS_BASELINE),
        first=_first_tokens(first, sizes.compile_rounds),
        first_raw=first,
    )


def _value(window: SaturationSample, figure: str) -> float:
    if figure == "rate":
        return window.tokens_per_s
    return us_per(window.server_cpu_s, window.tokens)


def _first_tokens(first: FirstTokens, rounds: int) -> FirstTokenFigures:
    def ms(values: list[float], q: float) -> float:
        return quantile(values, q) * 1e3

    return FirstTokenFigures(
        rounds=rounds,
        plain_p50_ms=ms(first.plain_s, 0.5),
        cached_p50_ms=ms(first.cached_s, 0.5),
        fresh_p50_ms=ms(first.fresh_s, 0.5),
        plain_p90_ms=ms(first.plain_s, 0.9),
        cached_p90_ms=ms(first.cached_s, 0.9),
        fresh_p90_ms=ms(first.fresh_s, 0.9),
        compile_ms=ms(first.fresh_s, 0.5) - ms(first.cached_s, 0.5),
    )
