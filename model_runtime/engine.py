"""The synchronous engine: one `step()` is schedule -> run -> sample -> postprocess.

Driven by `engine_loop.run_engine_loop` alone, on a thread of the server (`AsyncEngine`) or in a
process of its own (`EngineProcess`); `engine_front.EngineFront` is the event loop's face of it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from model_runtime.api import (
    ChatMessage,
    EngineStats,
    FinishReason,
    InvalidPrompt,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    ToolSpec,
    TopLogprob,
)
from model_runtime.config import EngineConfig
from model_runtime.embedder import embed, prompt_logprobs
from model_runtime.grammar import GrammarEngine, grammar_of
from model_runtime.in_flight import InFlightStep
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner, profile_activation_bytes
from model_runtime.models.cpu_linear import weight_formats
from model_runtime.models.loader import load_model
from model_runtime.request_checks import check_embed_inputs, check_request
from model_runtime.request_state import RequestState
from model_runtime.sampler import RowLogprobs, SamplingBatch, draw, sample
from model_runtime.scheduler import Batch, Scheduler
from model_runtime.sequence import Sequence
from model_runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_CPU_KV_GIB = 1.0
CPU_STEP_TOKENS = 512  # default tokens per step (see EngineConfig.max_num_batched_tokens)
GPU_STEP_TOKENS = 8192


@dataclass
class RequestGroup:
    """The `n` sequences of one request. All but the first wait in `held` until the first has
    computed the prompt, then take its KV blocks from the prefix cache instead of recomputing."""

    states: list[RequestState]
    held: list[Sequence] = field(default_factory=list)
    unfinished: int = 0


def sibling_seed(seed: int, index: int) -> int:
    """Sample i of a seeded request draws from its own stream; sample 0 from `seed` itself."""
    return seed if index == 0 else hash((seed, index)) & (2**63 - 1)


def resolve_device(config: EngineConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(config.device)


def resolve_dtype(config: EngineConfig, device: torch.device) -> tuple[torch.dtype, bool]:
    """The model's compute dtype, and whether a CPU model keeps its weights and KV cache at fp16.

    CPUs without fp16/bf16 arithmetic units compute in fp32; `auto` and `float16` there mean fp16
    linear weights and an fp16 KV cache (half the memory traffic per decode step; llama.cpp's
    default cache type too) with fp32 arithmetic. GPUs want bf16.
    """
    if device.type == "cpu" and config.dtype in ("auto", "float16"):
        return torch.float32, True
    if config.dtype == "auto":
        return torch.bfloat16, False
    return getattr(torch, config.dtype), False


def kv_budget_bytes(free: int, total: int, activation_peak: int, utilization: float, reserved: int) -> float:
    """GPU bytes left for the KV cache: what is free now, less one step's activation peak, less what
    another component on the device (the image pipeline) needs at its peak, less the share of the
    device that `gpu_memory_utilization` leaves untouched."""
    return free - activation_peak - reserved - (1 - utilization) * total


def kv_blocks(budget: float, per_block: int) -> int:
    """How many KV blocks `budget` bytes hold; raises when that is too few to serve anything."""
    num_blocks = int(budget // per_block)
    if num_blocks < 2:
        raise RuntimeError(f"KV budget of {budget / 2**20:.0f} MiB is too small for this model")
    return num_blocks


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config)
        self.dtype, self.half_weights = resolve_dtype(config, self.device)
        self.kv_dtype = torch.float16 if self.half_weights else self.dtype
        if self.device.type == "cpu":
            torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
        started = time.perf_counter()
        self.model, hf_config = load_model(config.model_path, self.device, self.dtype, self.half_weights)
        self.tokenizer = Tokenizer.from_folder(config.model_path)
        self.vocab_size = self.model.shape.vocab_size
        self.grammar = GrammarEngine(
            self.tokenizer.hf_tokenizer, self.vocab_size, self.tokenizer.eos_token_ids
        )
        self.max_num_batched_tokens = config.max_num_batched_tokens or (
            GPU_STEP_TOKENS if self.device.type == "cuda" else CPU_STEP_TOKENS
        )
        num_blocks = self._num_kv_blocks()
        self.max_model_len = min(
            config.max_model_len or hf_config.max_position_embeddings, num_blocks * config.block_size
        )
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            config.block_size,
            max_model_len=self.max_model_len,
            max_num_seqs=config.max_num_seqs,
            cuda_graphs=not config.enforce_eager,
            kv_dtype=self.kv_dtype,
        )
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, self.max_num_batched_tokens)
        self.model_info = ModelInfo(
            config.served_model_name, self.max_model_len, int(time.time()), vocab_size=self.vocab_size
        )
        self.requests: dict[str, RequestGroup] = {}
        self.overlap_steps = (
            config.overlap_steps if config.overlap_steps is not None else self.device.type == "cuda"
        )
        self.in_flight: InFlightStep | None = None
        self.steps = 0
        self.tokens_generated = 0
        if self.device.type == "cuda":
            self.warm_up()
        log.info(
            "loaded %s on %s (%s%s, %s KV cache) in %.1fs: %d KV blocks of %d tokens, context %d",
            config.served_model_name,
            self.device,
            self.dtype,
            f", {'+'.join(formats)} weights" if (formats := weight_formats(self.model)) else "",
            str(self.kv_dtype).removeprefix("torch."),
            time.perf_counter() - started,
            num_blocks,
            config.block_size,
            self.max_model_len,
        )

    def warm_up(self) -> None:
        """Two short requests through a prefill and decodes before serving. On a GPU the first
        block-table prefill compiles its Triton kernel and the first steps load cuBLAS's kernels:
        half a second or more that the first client would otherwise wait for. The counters start
        at zero afterwards; the warm-up's blocks stay in the prefix cache, where only a prompt of
        exactly these ids would find them."""
        params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        room = self.max_model_len - params.max_tokens  # a prompt must leave room for its tokens
        if room < 1:
            return
        for i, length in enumerate((40, 24)):
            prompt = [(1 + (i + t) % 8) % self.vocab_size for t in range(min(length, room))]
            self.add_request(f"warm-up-{i}", prompt, params)
        while self.has_work():
            self.step()
        self.steps = self.tokens_generated = 0
        self.blocks.prefix_queried_tokens = self.blocks.prefix_hit_tokens = 0

    def _num_kv_blocks(self) -> int:
        per_block = ModelRunner.kv_bytes_per_block(self.model, self.config.block_size, self.kv_dtype)
        if self.device.type == "cuda" and self.config.kv_cache_memory_gib is None:
            # Measured after a full-size step, so the activations of a long prefill keep room.
            peak = profile_activation_bytes(
                self.model,
                self.max_num_batched_tokens,
                self.config.max_num_seqs,
                self.config.block_size,
            )
            free, total = torch.cuda.mem_get_info(self.device)
            budget = kv_budget_bytes(
                free,
                total,
                peak,
                self.config.gpu_memory_utilization,
                self.config.reserved_gpu_memory_bytes,
            )
        else:
            budget = (self.config.kv_cache_memory_gib or DEFAULT_CPU_KV_GIB) * 2**30
        return kv_blocks(budget, per_block)

    # -- requests -------------------------------------------------------------------------------

    def embed(self, inputs: Seq[Seq[int]]) -> list[list[float]]:
        """One mean-pooled, normalised embedding per token-id input (see `embedder`)."""
        check_embed_inputs(inputs, self.model_info)
        return [embed(self.model, list(ids)).tolist() for ids in inputs]

    def render_chat(self, messages: Seq[ChatMessage], tools: Seq[ToolSpec] | None = None) -> list[int]:
        return self.tokenizer.render_chat(messages, tools=tools)

    def validate(self, prompt_token_ids: Seq[int], params: SamplingParams) -> None:
        check_request(prompt_token_ids, params, self.model_info)

    def add_request(self, request_id: str, prompt_token_ids: Seq[int], params: SamplingParams) -> None:
        self.validate(prompt_token_ids, params)
        if request_id in self.requests:
            raise InvalidPrompt(f"request id {request_id!r} is already running", param=None)
        max_total = min(len(prompt_token_ids) + (params.max_tokens or self.max_model_len), self.max_model_len)
        grammar = grammar_of(params.constraint) if params.constraint is not None else None
        group = RequestGroup(states=[], unfinished=params.n)
        prompt_entries = self._prompt_logprobs(prompt_token_ids, params.prompt_logprobs)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(sibling_seed(params.seed, index))
            seq = Sequence(
                request_id=request_id,
                token_ids=list(prompt_token_ids),
                num_prompt_tokens=len(prompt_token_ids),
                params=params,
                max_total_tokens=max_total,
                generator=generator,
                index=index,
                matcher=self.grammar.matcher(grammar) if grammar is not None else None,
            )
            detokenizer = self.tokenizer.detokenizer(prompt_token_ids)
            group.states.append(
                RequestState(
                    seq,
                    detokenizer,
                    self.tokenizer.eos_token_ids,
                    self.tokenizer.token_bytes,
                    self.tokenizer.token_text,
                )
            )
            group.states[-1].prompt_logprobs = prompt_entries
            if index == 0:
                self.scheduler.add(seq)
            else:
                group.held.append(seq)
        self.requests[request_id] = group

    def _prompt_logprobs(self, prompt: Seq[int], k: int | None) -> list[TokenLogprob] | None:
        """The prompt's tokens with their logprobs (`echo` with `logprobs`), text pieces that
        concatenate to the prompt's text; computed by a pass of its own over the prompt."""
        if k is None:
            return None
        ids = list(prompt)
        detokenizer = self.tokenizer.detokenizer()
        pieces = [detokenizer.add(t) for t in ids]
        pieces[-1] += detokenizer.flush()
        text_of, bytes_of = self.tokenizer.token_text, self.tokenizer.token_bytes
        entries = [TokenLogprob(ids[0], pieces[0], bytes_of(ids[0]), None)]
        for token, piece, (lp, top) in zip(
            ids[1:], pieces[1:], prompt_logprobs(self.model, ids, k), strict=True
        ):
            alternatives = tuple(TopLogprob(i, text_of(i), bytes_of(i), v) for i, v in top)
            entries.append(TokenLogprob(token, piece, bytes_of(token), lp, alternatives))
        return entries

    def abort(self, request_id: str) -> list[RequestOutput]:
        group = self.requests.pop(request_id, None)
        if group is None:
            return []
        outputs = []
        for state in group.states:
            if not state.seq.is_finished:
                if self.in_flight is not None and state.seq in self.in_flight.rows:
                    state.seq.token_ids.pop()  # its drawn token is dropped, not counted
                self.scheduler.finish(state.seq, FinishReason.ABORT)
                outputs.append(state.output("", [], FinishReason.ABORT))
        if self.in_flight is not None and all(s.is_finished for s in self.in_flight.seqs):
            self.in_flight = None  # none of its tokens is wanted: there is nothing left to read
        return outputs

    def fail_all(self, message: str) -> list[RequestOutput]:
        """Ends every request with an error; used when a step itself failed."""
        outputs = []
        for request_id in list(self.requests):
            for out in self.abort(request_id):
                out.finish_reason, out.error = FinishReason.ERROR, message
                outputs.append(out)
        self.in_flight = None
        return outputs

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self.in_flight is not None

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=len(self.scheduler.waiting),
            running=len(self.scheduler.running),
            kv_blocks_total=self.blocks.num_blocks,
            kv_blocks_free=self.blocks.num_free_blocks,
            steps=self.steps,
            tokens_generated=self.tokens_generated,
            prefix_cache_queried_tokens=self.blocks.prefix_queried_tokens,
            prefix_cache_hit_tokens=self.blocks.prefix_hit_tokens,
        )

    # -- the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Runs one step; returns the outputs of the tokens read this step.

        With `overlap_steps`, a step whose rows all draw without the host (no penalties, grammar
        or logprobs) is launched before the previous step's tokens are read, and returns those.
        """
        batch = self.scheduler.schedule()
        overlap = self.overlap_steps and bool(batch) and not any(
            _needs_host_tokens(c.seq) for c in batch.chunks if c.samples
        )
        outputs: list[RequestOutput] = []
        if self.in_flight is not None and not overlap:
            outputs = self._resolve()
            batch = batch.without_finished()
        if not batch:
            return outputs
        carried = self.in_flight.carried_by(_sampled_rows(batch)) if self.in_flight is not None else None
        logits, sampled = self.runner.run(batch, carried)
        seqs = [c.seq for c in sampled]
        sampling = self._sampling_batch(seqs)
        self.steps += 1
        if overlap:
            launched = InFlightStep(seqs, draw(logits, sampling))
            if self.in_flight is not None:
                outputs = self._resolve()  # while the device runs the step just launched
            self._advance(batch)
            for seq in seqs:
                if not seq.is_finished:
                    seq.token_ids.append(0)  # stands in for the drawn token until it is read
            self.in_flight = launched
            return outputs
        result = sample(logits, sampling)
        self._advance(batch)
        self.tokens_generated += len(seqs)
        return outputs + [
            self._postprocess(seq, token, row)
            for seq, token, row in zip(seqs, result.tokens, result.logprobs, strict=True)
        ]

    def _advance(self, batch: Batch) -> None:
        for chunk in batch.chunks:
            if not chunk.seq.is_finished:  # finished while the step ran: its blocks are gone
                self.scheduler.advance(chunk)

    def _resolve(self) -> list[RequestOutput]:
        """Reads the in-flight step's tokens (the host sync) and hands them to their sequences."""
        flight, self.in_flight = self.in_flight, None
        assert flight is not None
        outputs = []
        for seq, token in zip(flight.seqs, flight.token_ids(), strict=True):
            if seq.is_finished:
                continue  # aborted while its token was on the way
            seq.token_ids.pop()  # the stand-in
            outputs.append(self._postprocess(seq, token, None))
        self.tokens_generated += len(outputs)
        return outputs

    def _sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        constrained = any(s.matcher is not None for s in seqs)
        return SamplingBatch(
            params=[s.params for s in seqs],
            generators=[s.generator for s in seqs],
            token_ids=[s.token_ids for s in seqs],
            num_prompt_tokens=[s.num_prompt_tokens for s in seqs],
            allowed=self.grammar.bitmask([s.matcher for s in seqs]) if constrained else None,
        )

    def _postprocess(self, seq: Sequence, token: int, row: RowLogprobs | None) -> RequestOutput:
        group = self.requests[seq.request_id]
        state = group.states[seq.index]
        if group.held and seq.num_output_tokens == 0:
            self._release_held(group)  # the prompt's blocks are computed and registered
        try:
            text, reason, logprobs = state.on_token(token, row)
        except Exception as exc:  # one request's failure must not take the engine down
            log.exception("postprocessing failed for %s", seq.request_id)
            reason = FinishReason.ERROR
            out = state.output("", [token], reason)
            out.error = f"internal error while decoding the output: {exc}"
            self._finish(seq, reason)
            return out
        if reason is not None:
            self._finish(seq, reason)
        return state.output(text, [token], reason, logprobs)

    def _release_held(self, group: RequestGroup) -> None:
        for seq in reversed(group.held):
            self.scheduler.add(seq, front=True)
        group.held.clear()

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.scheduler.finish(seq, reason)
        group = self.requests[seq.request_id]
        if group.held:
            self._release_held(group)
        group.unfinished -= 1
        if group.unfinished == 0:
            del self.requests[seq.request_id]


def _needs_host_tokens(seq: Sequence) -> bool:
    """Whether drawing `seq`'s next token needs its last one on the host: penalties count it, a
    grammar advances on it; and logprobs are read on the host in the step that draws them."""
    params = seq.params
    return params.penalized or seq.matcher is not None or params.logprobs is not None


def _sampled_rows(batch: Batch) -> list[tuple[int, Sequence]]:
    """The input row of each sampling chunk's last token (decodes first, then prefill chunks)."""
    rows, row = [], 0
    for chunk in batch.chunks:
        row += chunk.length
        if chunk.samples:
            rows.append((row - 1, chunk.seq))
    return rows
