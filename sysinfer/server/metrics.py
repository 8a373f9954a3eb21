"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sysinfer_requests", "HTTP completion requests by status", ["status"], registry=r)
        self.ttft = Histogram("sysinfer_time_to_first_token_seconds", "Request received to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("sysinfer_inter_token_latency_seconds", "Time between streamed tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("sysinfer_prompt_tokens", "Prompt tokens received", registry=r)
        self.generated_tokens = Counter("sysinfer_generated_tokens", "Tokens generated", registry=r)
        # Encoder work (--embedding-model, --rerank-model): requests answered and input tokens run, by kind
        self.encoder_requests = Counter("sysinfer_encoder_requests", "Embedding and rerank requests answered",
                                        ["kind"], registry=r)
        self.encoder_tokens = Counter("sysinfer_encoder_tokens", "Tokens run through the embedding and rerank "
                                      "models", ["kind"], registry=r)
        self.running = Gauge("sysinfer_running_sequences", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("sysinfer_waiting_sequences", "Sequences waiting for admission", registry=r)
        self.kv_used = Gauge("sysinfer_kv_blocks_used", "KV cache blocks in use", registry=r)
        self.kv_free = Gauge("sysinfer_kv_blocks_free", "KV cache blocks free (including cached prefixes)", registry=r)
        self.kv_cached = Gauge("sysinfer_kv_blocks_cached", "Free KV blocks still holding a cached prefix", registry=r)
        self.prefix_hits = Gauge("sysinfer_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                 registry=r)
        self.prompt_tokens_computed = Gauge("sysinfer_prompt_tokens_computed",
                                            "Prompt tokens run through the model (not found in the prefix cache)",
                                            registry=r)
        self.preemptions = Gauge("sysinfer_preemptions", "Sequences preempted for lack of KV blocks", registry=r)
        self.step_seconds = Gauge("sysinfer_last_step_seconds", "Duration of the last native step", registry=r)
        # Steps and the time in their native part (sysinfer_engine_steps_total, sysinfer_native_step_seconds_total;
        # summed over lanes): wall time less the native share is the Python side's (plan, sampling, streaming).
        self.steps = Counter("sysinfer_engine_steps", "Engine steps run", registry=r)
        self.native_seconds = Counter("sysinfer_native_step_seconds", "Time in native steps (with building their "
                                      "inputs)", registry=r)
        self._steps_seen = (0, 0.0)  # the engine's step totals at the last observation
        self.phase_seconds = Counter("sysinfer_engine_phase_seconds", "The engine loop's time by phase: plan, "
                                     "execute (the native step and its hand-off), postprocess, dispatch, stream, "
                                     "between", ["phase"], registry=r)
        self._phases_seen: dict[str, float] = {}
        # Speculative decoding (counters: sysinfer_draft_tokens_total, ..._accepted_..., ..._rejected_...)
        self.draft_tokens = Counter("sysinfer_draft_tokens", "Speculative tokens drafted and verified", registry=r)
        self.accepted_draft_tokens = Counter("sysinfer_accepted_draft_tokens",
                                             "Speculative tokens the model confirmed", registry=r)
        self.rejected_draft_tokens = Counter("sysinfer_rejected_draft_tokens",
                                             "Speculative tokens the model rejected", registry=r)
        self._drafts_seen = (0, 0)  # the engine's totals at the last observation
        self.draft_kv_used = Gauge("sysinfer_draft_kv_blocks_used", "The draft model's KV cache blocks in use "
                                   "(--draft-model; 0 without one)", registry=r)
        self.draft_kv_free = Gauge("sysinfer_draft_kv_blocks_free", "The draft model's KV cache blocks free",
                                   registry=r)
        self.draft_seconds = Gauge("sysinfer_draft_model_seconds", "Time spent in the draft model's steps",
                                   registry=r)
        self._add_router_gauges(r)
        self._add_lane_gauges(r)

    def _add_router_gauges(self, r: CollectorRegistry) -> None:
        """The three gauges of the Gateway API Inference Extension's model-server protocol, with the
        meaning of vLLM's vllm:num_requests_waiting, vllm:num_requests_running and
        vllm:kv_cache_usage_perc, for endpoint pickers and autoscalers."""
        self.num_requests_waiting = Gauge("sysinfer_num_requests_waiting",
                                          "Requests queued, not yet admitted to the running batch", registry=r)
        self.num_requests_running = Gauge("sysinfer_num_requests_running",
                                          "Requests in the running batch (prefilling or decoding)", registry=r)
        self.kv_cache_usage_perc = Gauge("sysinfer_kv_cache_usage_perc",
                                         "Fraction of KV cache blocks in use, 0 to 1 (1 = full)", registry=r)

    def _add_lane_gauges(self, r: CollectorRegistry) -> None:
        """Per lane (--numa replicate: one per NUMA node, each with its own KV cache; otherwise one
        lane, the engine). The unlabelled gauges above are the sums over lanes."""
        self.lane_running = Gauge("sysinfer_lane_running_sequences", "Sequences in a lane's running batch",
                                  ["lane"], registry=r)
        self.lane_waiting = Gauge("sysinfer_lane_waiting_sequences", "Sequences waiting in a lane", ["lane"],
                                  registry=r)
        self.lane_kv_used = Gauge("sysinfer_lane_kv_blocks_used", "KV cache blocks in use in a lane", ["lane"],
                                  registry=r)
        self.lane_kv_free = Gauge("sysinfer_lane_kv_blocks_free", "KV cache blocks free in a lane", ["lane"],
                                  registry=r)
        self.lane_tokens = Gauge("sysinfer_lane_generated_tokens", "Tokens a lane has generated", ["lane"],
                                 registry=r)

    def observe_lanes(self, lanes) -> None:
        for i, s in enumerate(lanes):
            lane = str(i)
            self.lane_running.labels(lane=lane).set(s.running)
            self.lane_waiting.labels(lane=lane).set(s.waiting)
            self.lane_kv_used.labels(lane=lane).set(s.kv_blocks_used)
            self.lane_kv_free.labels(lane=lane).set(s.kv_blocks_free)
            self.lane_tokens.labels(lane=lane).set(s.tokens_generated)

    def _observe_router_gauges(self, s) -> None:
        total = s.kv_blocks_used + s.kv_blocks_free
        self.num_requests_waiting.set(s.waiting)
        self.num_requests_running.set(s.running)
        self.kv_cache_usage_perc.set(s.kv_blocks_used / total if total else 0.0)

    def observe_engine(self, s) -> None:
        self.running.set(s.running)
        self.waiting.set(s.waiting)
        self.kv_used.set(s.kv_blocks_used)
        self.kv_free.set(s.kv_blocks_free)
        self.kv_cached.set(s.kv_blocks_cached)
        self.prefix_hits.set(s.prefix_hit_tokens)
        self.prompt_tokens_computed.set(s.prompt_tokens_computed)
        self.preemptions.set(s.preemptions)
        self.step_seconds.set(s.last_step_seconds)
        steps, seconds = s.steps - self._steps_seen[0], s.step_seconds_total - self._steps_seen[1]
        if steps > 0:
            self.steps.inc(steps)
            self.native_seconds.inc(max(seconds, 0.0))
        self._steps_seen = (s.steps, s.step_seconds_total)
        drafted, accepted = s.draft_tokens - self._drafts_seen[0], s.accepted_draft_tokens - self._drafts_seen[1]
        if drafted > 0:  # the engine's totals only grow; a counter takes what was added since
            self.draft_tokens.inc(drafted)
            self.accepted_draft_tokens.inc(accepted)
            self.rejected_draft_tokens.inc(drafted - accepted)
        self._drafts_seen = (s.draft_tokens, s.accepted_draft_tokens)
        self.draft_kv_used.set(s.draft_kv_blocks_used)
        self.draft_kv_free.set(s.draft_kv_blocks_free)
        self.draft_seconds.set(s.draft_model_seconds)
        self._observe_router_gauges(s)

    def observe_phases(self, phases: dict[str, float]) -> None:
        """The engine loop's phase totals (AsyncEngine.phase_seconds; they only grow)."""
        for phase, total in phases.items():
            added = total - self._phases_seen.get(phase, 0.0)
            if added > 0:
                self.phase_seconds.labels(phase=phase).inc(added)
            self._phases_seen[phase] = total

    def render(self) -> str:
        return generate_latest(self.registry).decode()
