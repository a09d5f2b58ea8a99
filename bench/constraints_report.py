"""The constraints scenario's part of the report: a table per workload, the tool-call
parser's own cost, and the first-token figures of a new schema against a cached one."""

from __future__ import annotations

import math

from .constraints import BASELINE, ConstraintsSummary, WorkloadFigures


def _f(value: float, spec: str = ",.0f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _finish(w: WorkloadFigures) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in w.finish.items()) or "none"


def _spread(w: WorkloadFigures) -> str:
    """The median ratio, and its lowest and highest repetition when there were several."""
    text = f"{_f(w.cpu_vs_plain, '.2f')}x"
    each = [r for r in w.cpu_vs_plain_each if not math.isnan(r)]
    if len(each) > 1 and w.workload != BASELINE:
        text += f" ({min(each):.2f}-{max(each):.2f})"
    return text


def _calls(w: WorkloadFigures) -> str:
    if not w.workload.startswith("tools_"):
        return "-"  # no tools offered: nothing to call
    return f"{_f(w.tool_call_share * 100, '.0f')}%"


def constraints_section(c: ConstraintsSummary) -> list[str]:
    lines = [
        f"{c.streams} concurrent streams on the gRPC door, step 1, at most {c.max_tokens} "
        "tokens a stream, the engine on demand; medians of the repetitions, and every ratio "
        "against plain text's window of the same repetition (in brackets, the lowest and "
        "highest repetition). Server CPU per token includes "
        "the simulated engine's work, which under a constraint is llguidance's token mask and "
        "sampling among the tokens it allows (in the server's process).",
        "",
        "| workload | tokens/s | server us/token | CPU per token vs plain | added us/token "
        "| tokens/s vs plain | tokens/stream | streams with a call | finished | client us/token "
        "| others' CPU | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in c.workloads:
        lines.append(
            f"| {w.description} | {_f(w.tokens_per_s)} | {_f(w.server_us_per_token, '.1f')} "
            f"| {_spread(w)} | {_f(w.added_us_per_token, '+.1f')} "
            f"| {_f(w.rate_vs_plain, '.2f')}x | {_f(w.tokens_per_stream, '.1f')} "
            f"| {_calls(w)} | {_finish(w)} "
            f"| {_f(w.client_us_per_token, '.1f')} | {_f(w.other_cpu_share * 100, '.0f')}% "
            f"| {w.errors} |"
        )
    lines += [
        "",
        'Against tools in the prompt with tool_choice "none" (the same prompt, no grammar, '
        f"no parser): the tool-call parser alone adds {_f(c.parser_us_per_token, '+.1f')} us "
        f'a token ("auto" answered as text); a forced call adds '
        f"{_f(c.forced_us_per_token, '+.1f')} us a token (its grammar and the parser). "
        f'The "auto" streams take seeds the server answers as text (found by asking it: '
        f"{len(c.seeds)} seeds); every workload uses the same seeds.",
    ]
    first = c.first
    if first is not None:
        lines += [
            "",
            f"First token, one request at a time on the idle server ({first.rounds} rounds, "
            "the order rotating): no constraint p50 "
            f"{_f(first.plain_p50_ms, '.2f')} ms (p90 {_f(first.plain_p90_ms, '.2f')}); the "
            f"workload's JSON schema, compiled already, {_f(first.cached_p50_ms, '.2f')} ms "
            f"(p90 {_f(first.cached_p90_ms, '.2f')}); the same schema new to the server (a "
            f"nonce in its description), {_f(first.fresh_p50_ms, '.2f')} ms (p90 "
            f"{_f(first.fresh_p90_ms, '.2f')}). A schema's first compile costs "
            f"{_f(first.compile_ms, '.2f')} ms, once: later requests with the same text hit "
            "the caches.",
        ]
    return lines
