"""The transformers engine's worker: one thread that runs every live sequence as one batch.

Each turn of its loop:

1. drops the sequences of aborted jobs (their cache rows are freed here);
2. admits jobs from the inbox, first come first served, while the batch has room
   for their n sequences (``max_batch_size``; a bigger job runs when it is alone),
   and prefills each on its own (batch of one, no padding; the cache is copied n
   times for ``n`` > 1); the first tokens go out at once;
3. runs ONE decode step for every live sequence (a forward of one token each, KV
   cache reused) and samples each sequence's next token;
4. posts what each job gained to the event loop (``publish``): one call per step.

Batching. Sequences share one left-padded batch. A newly prefilled job joins it
by padding the shorter of the two caches on the left (zero keys and values,
masked out by the attention mask) and concatenating along the batch dimension;
each sequence passes its own position ids, so padding shifts no positions.
Finished and aborted sequences leave the batch at once (``batch_select_indices``)
and pad columns that no sequence needs any more are cut off, so the cache never
keeps the longest departed prompt's length.

LoRA adapters (``_hf_lora.py``): with any loaded, the model is a ``PeftModel`` and
every forward passes ``adapter_names``, one per batch row, read off the batch's
rows at that moment (a row's request's adapter, or ``BASE``): a prefill's one row,
a decode's every row. Compaction and merging move rows and cache rows together,
so the names stay aligned with the rows they run on.

Only plain ``DynamicLayer`` caches can be padded so. A model with other cache
layers (sliding windows, linear attention) runs each job as a batch of its own
(its n sequences together), stepped in turn with the others: correct, slower.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ._hf_handle import Event, Gained, Job
from ._hf_lora import BASE, base_model
from ._hf_sequence import LiveSequence
from .base import EngineUnavailable

log = logging.getLogger("tokenwire.engine.transformers")

Publish = Callable[[list[Event]], None]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    device: torch.device
    max_batch_size: int
    eos_ids: frozenset[int]
    text_vocab: int  # ids from here on are embedding padding, never sampled
    lora: bool = False  # LoRA adapters are loaded: every forward names each row's adapter


class _Batch:
    __slots__ = ("cache", "mask", "paddable", "rows")

    def __init__(self, rows: list[LiveSequence], cache: DynamicCache, mask: torch.Tensor) -> None:
        self.rows, self.cache, self.mask = rows, cache, mask
        self.paddable = all(type(layer) is DynamicLayer for layer in cache.layers)


class Scheduler:
    """Owns the model while running: ``start()``, ``add(job)`` from any thread, ``stop()``."""

    def __init__(self, model: Any, tokenizer: Any, config: SchedulerConfig, publish: Publish):
        self._model, self._tok, self._cfg, self._publish = model, tokenizer, config, publish
        self._cond = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._batches: list[_Batch] = []
        self._events: list[Event] = []
        self._stopping = False
        # A PeftModel's forward takes **kwargs: the transformers model's says what it takes.
        self._base = base_model(model)
        parameters = inspect.signature(self._base.forward).parameters
        self._cache_arg = _cache_argument(parameters)
        self._prefill_args = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self._thread = threading.Thread(target=self._run, name="tokenwire-hf", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def live_sequences(self) -> int:
        """Sequences in the batch now (read from another thread: a snapshot)."""
        return sum(len(batch.rows) for batch in list(self._batches))

    @property
    def waiting_jobs(self) -> int:
        """Jobs in the inbox, not in the batch yet (a snapshot)."""
        return len(self._inbox)

    @property
    def running_jobs(self) -> int:
        """Jobs with a sequence in the batch (a snapshot)."""
        return len({row.job for batch in list(self._batches) for row in list(batch.rows)})

    @property
    def cache_tokens(self) -> int:
        """Token positions the batch's KV caches hold, left padding included: each
        batch keeps every row as long as its longest (a snapshot)."""
        return sum(len(batch.rows) * batch.mask.shape[-1] for batch in list(self._batches))

    def start(self) -> None:
        self._thread.start()

    def add(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise EngineUnavailable("the transformers engine has stopped")
            self._inbox.append(job)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._turn():
                    pass
        except BaseException as error:  # a bug: fail every job rather than leave it hanging
            log.exception("the transformers worker failed")
            with self._cond:
                self._stopping = True
                jobs = {row.job for b in self._batches for row in b.rows} | set(self._inbox)
            self._events = [(job, f"engine worker failed: {error!r}") for job in jobs]
            self._flush()
        self._batches.clear()

    def _turn(self) -> bool:
        for batch in list(self._batches):
            self._compact(batch)  # aborted sequences leave before anything else runs
        with self._cond:
            while not (self._stopping or self._inbox or self._batches):
                self._cond.wait()
            if self._stopping:
                return False
            admitted = self._admissible()
        for job in admitted:
            self._prefill(job)
        self._flush()
        for batch in list(self._batches):
            self._decode(batch)
        self._flush()
        return True

    def _admissible(self) -> list[Job]:
        live = sum(len(b.rows) for b in self._batches)
        jobs: list[Job] = []
        while self._inbox:
            job, n = self._inbox[0], self._inbox[0].request.sampling.n
            if not job.aborted:
                if live and live + n > self._cfg.max_batch_size:
                    break
                jobs.append(job)
                live += n
            self._inbox.popleft()
        return jobs

    def _prefill(self, job: Job) -> None:
        request, cfg = job.request, self._cfg
        device = cfg.device
        try:
            ids = torch.tensor([request.prompt_token_ids], dtype=torch.long, device=device)
            cache = DynamicCache(config=self._base.config)
            out = self._model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                **{self._cache_arg: cache},
                **self._prefill_args,
                **self._adapter_args([job]),
            )
            logits = out.logits[0, -1, : cfg.text_vocab]
            n = request.sampling.n
            if n > 1:
                cache.batch_repeat_interleave(n)
            rows = [
                LiveSequence(job, i, self._tok, cfg.eos_ids, cfg.text_vocab, device)
                for i in range(n)
            ]
            deltas = [row.advance(logits) for row in rows]
        except Exception as error:
            self._fail(job, error)
            return
        self._events.append((job, Gained(deltas, [row.held for row in rows])))
        batch = _Batch(rows, cache, torch.ones((n, ids.shape[1]), dtype=torch.long, device=device))
        self._compact(batch, owned=False)
        if not batch.rows:
            return
        main = next((b for b in self._batches if b.paddable), None)
        if batch.paddable and main is not None:
            _merge(main, batch)
        else:
            self._batches.append(batch)

    def _decode(self, batch: _Batch) -> None:
        rows, device = batch.rows, self._cfg.device
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], dim=1)
        try:
            out = self._model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=batch.mask,
                use_cache=True,
                **{self._cache_arg: batch.cache},
                **self._adapter_args([row.job for row in rows]),
            )
        except Exception as error:
            self._batches.remove(batch)
            for job in {row.job for row in rows if not row.done}:
                self._fail(job, error)
            return
        logits = out.logits[:, -1, : self._cfg.text_vocab]
        gained: dict[Job, Gained] = {}
        for i, row in enumerate(rows):
            row.position += 1
            if row.done or row.job.aborted:
                continue
            try:
                delta = row.advance(logits[i])
            except Exception as error:
                self._fail(row.job, error)
                continue
            step = gained.get(row.job)
            if step is None:
                step = gained[row.job] = Gained([], [])
            step.deltas.append(delta)
            step.held.append(row.held)
        self._events.extend((job, d) for job, d in gained.items() if not job.aborted)
        self._compact(batch)

    def _adapter_args(self, jobs: list[Job]) -> dict[str, Any]:
        """PEFT's ``adapter_names`` for a forward whose batch rows are ``jobs``' rows."""
        if not self._cfg.lora:
            return {}
        return {"adapter_names": [job.request.adapter or BASE for job in jobs]}

    def _compact(self, batch: _Batch, owned: bool = True) -> None:
        """Drop finished and aborted rows, freeing their cache; cut pad columns no row needs.

        A batch that cannot be padded keeps its finished rows until all are done.
        """
        for row in batch.rows:
            row.done = row.done or row.job.aborted
        keep = [i for i, row in enumerate(batch.rows) if not row.done]
        if not keep:
            batch.rows = []
            if owned:
                self._batches.remove(batch)
        elif len(keep) < len(batch.rows) and batch.paddable:
            index = torch.tensor(keep, dtype=torch.long, device=self._cfg.device)
            batch.cache.batch_select_indices(index)
            batch.mask = batch.mask[index]
            batch.rows = [batch.rows[i] for i in keep]
            _pad_left(batch, -int(torch.argmax(batch.mask.any(dim=0).int())))

    def _fail(self, job: Job, error: Exception) -> None:
        log.exception("request %s failed in the transformers engine", job.request.request_id)
        job.aborted = True  # its rows leave the batch at the next compaction
        self._events.append((job, f"generation failed: {error!r}"))

    def _flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self._publish(events)


def _cache_argument(parameters: Mapping[str, inspect.Parameter]) -> str:
    """The name ``forward`` takes the KV cache by.

    transformers renamed ``past_key_values`` to ``cache`` during 5.x (5.24 warns on
    the old name, to be removed in 5.40); 4.56, the floor, and remote-code models
    written for it take only ``past_key_values``.
    """
    return "cache" if "cache" in parameters else "past_key_values"


def _pad_left(batch: _Batch, columns: int) -> None:
    """Add ``columns`` masked columns on the left of the cache (remove them when negative)."""
    if columns == 0:
        return
    for layer in batch.cache.layers:
        assert isinstance(layer, DynamicLayer)
        keys, values = layer.keys, layer.values
        assert keys is not None and values is not None
        if columns > 0:
            layer.keys = F.pad(keys, (0, 0, columns, 0))
            layer.values = F.pad(values, (0, 0, columns, 0))
        else:
            layer.keys, layer.values = keys[:, :, -columns:], values[:, :, -columns:]
    batch.mask = F.pad(batch.mask, (columns, 0)) if columns > 0 else batch.mask[:, -columns:]


def _merge(main: _Batch, new: _Batch) -> None:
    """Append ``new``'s rows to ``main``, left-padding whichever cache is shorter."""
    length = max(main.mask.shape[1], new.mask.shape[1])
    _pad_left(main, length - main.mask.shape[1])
    _pad_left(new, length - new.mask.shape[1])
    for a, b in zip(main.cache.layers, new.cache.layers, strict=True):
        assert isinstance(a, DynamicLayer) and isinstance(b, DynamicLayer)
        assert a.keys is not None and a.values is not None
        assert b.keys is not None and b.values is not None
        a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
    main.mask = torch.cat([main.mask, new.mask])
    main.rows.extend(new.rows)
