"""``model.generate``'s decoding loop over a step engine (:class:`vlm.engines.onnx.OrtDecoder`).

Contract
- :func:`settings` merges ``generate`` keyword arguments into the model's generation config and returns it when
  the loop here reproduces what ``model.generate`` would do with it (one beam; greedy or sampled; repetition
  penalty, minimum new tokens, suppressed tokens, temperature, top-k, top-p, min-p; end ids, stop strings,
  ``logits_processor`` / ``stopping_criteria`` / ``streamer`` objects), else ``None``: the caller then runs
  ``model.generate`` itself (beams, a cache argument, any other setting).
- :func:`run` decodes a prepared batch on ``engine`` (``prefill(batch)`` -> state with ``.logits`` [B, V];
  ``step(state, token_ids)`` -> next logits) and returns the sequences as ``model.generate`` returns them:
  prompt ids followed by the new ids, rows that ended early padded with the pad id. The logits processors
  and stopping criteria are transformers' own classes, built in the order ``generate`` builds them, then the
  caller's; sampling draws with ``torch.multinomial`` as ``generate`` does, so a seeded request draws the same
  tokens from the same scores. Only the logits come from the engine.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from transformers import (
    EosTokenCriteria,
    LogitsProcessorList,
    MaxLengthCriteria,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
    StopStringCriteria,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# generation-config fields this loop implements; any other field set away from its default -> model.generate
HANDLED = frozenset({
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "num_beams",
    "repetition_penalty", "suppress_tokens", "eos_token_id", "pad_token_id", "bos_token_id", "stop_strings",
    "use_cache", "output_attentions", "output_hidden_states", "transformers_version", "_from_model_config",
})
MAX_DRAFT = 32  # tokens proposed by a Drafter per engine call
OBJECTS = ("logits_processor", "stopping_criteria", "streamer", "tokenizer")  # generate kwargs that are not settings


def settings(model, kwargs: dict):
    """The ``GenerationConfig`` ``model.generate(**kwargs)`` would use, when :func:`run` can reproduce it."""
    config = copy.deepcopy(model.generation_config)
    unknown = config.update(**{k: v for k, v in kwargs.items() if k not in OBJECTS})
    if unknown or set(config.to_diff_dict()) - HANDLED or (config.num_beams or 1) > 1:
        return None
    if config.max_new_tokens is None:
        return None
    return config


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def processors(config, input_ids: torch.Tensor, attention_mask: torch.Tensor, custom) -> LogitsProcessorList:
    """``generate``'s logits processors for ``config`` (its order), then ``custom``, then the sampling warpers."""
    out = LogitsProcessorList()
    eos = torch.tensor(_as_list(config.eos_token_id))
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(
            config.repetition_penalty, prompt_ignore_length=(attention_mask != 0).int().argmax(dim=1)))
    if config.min_new_tokens is not None and config.min_new_tokens > 0 and len(eos):
        out.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[-1], config.min_new_tokens, eos))
    if config.suppress_tokens is not None:
        out.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    out.extend(custom or [])
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            out.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            out.append(TopKLogitsWarper(top_k=config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=config.top_p))
        if config.min_p is not None:
            out.append(MinPLogitsWarper(min_p=config.min_p))
    return out


def criteria(config, prompt_width: int, tokenizer, custom) -> StoppingCriteriaList:
    """``generate``'s stopping criteria for ``config``, then ``custom``."""
    out = StoppingCriteriaList([MaxLengthCriteria(max_length=prompt_width + config.max_new_tokens)])
    if config.stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings need the tokenizer (pass tokenizer=...)")
        out.append(StopStringCriteria(stop_strings=config.stop_strings, tokenizer=tokenizer))
    eos = _as_list(config.eos_token_id)
    if eos:
        out.append(EosTokenCriteria(eos_token_id=eos))
    out.extend(custom or [])
    return out


@runtime_checkable
class Drafter(Protocol):
    """A logits processor that knows tokens forced next (a grammar's literals): ``draft(input_ids)`` -> ids."""

    def draft(self, input_ids: torch.LongTensor) -> list[int]: ...


def run(engine, batch, config, kwargs: dict) -> torch.LongTensor:
    """Decode ``batch`` (``input_ids``, ``attention_mask``, ``pixel_values``) on ``engine`` with ``config`` (from
    :func:`settings`) and the objects among ``kwargs`` (``logits_processor``, ``stopping_criteria``,
    ``streamer``, ``tokenizer``); returns prompt + new ids per row.

    Jump-forward: for a single greedy row on an engine that can feed several tokens at once (``extend`` /
    ``truncate``), a :class:`Drafter` among the caller's processors proposes the tokens its grammar forces next;
    they are fed together with the chosen token in one engine call, then each is checked as if decoded one by
    one (processors, argmax, stopping criteria). The first that greedy decoding would not pick is replaced by
    the one it picks and its KV dropped, so the answer is the one token-by-token decoding gives."""
    input_ids = batch["input_ids"]
    custom = kwargs.get("logits_processor")
    process = processors(config, input_ids, batch["attention_mask"], custom)
    stop = criteria(config, input_ids.shape[-1], kwargs.get("tokenizer"), kwargs.get("stopping_criteria"))
    eos = _as_list(config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    streamer = kwargs.get("streamer")
    drafters = [p for p in custom or [] if isinstance(p, Drafter)]
    jump = (bool(drafters) and not config.do_sample and input_ids.shape[0] == 1
            and getattr(engine, "can_extend", False))
    if streamer is not None:
        streamer.put(input_ids.cpu())
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long)
    state = engine.prefill(batch)
    logits = state.logits
    while True:
        scores = process(input_ids, torch.from_numpy(logits))
        if config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        if pad is not None:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished * (~stop(input_ids, scores)).long()
        if unfinished.max() == 0:
            break
        draft = [t for d in drafters for t in d.draft(input_ids)][:MAX_DRAFT] if jump else []
        if not draft:
            logits = engine.step(state, tokens.numpy())
            continue
        outs = engine.extend(state, [int(tokens[0]), *draft])
        logits = outs[-1][None]
        for i, proposed in enumerate(draft):
            scores = process(input_ids, torch.from_numpy(outs[i][None].copy()))  # processors may write in place
            token = int(torch.argmax(scores, dim=-1)[0])
            if token != proposed:  # greedy goes elsewhere: drop the rest of the draft, decode on from outs[i]
                engine.truncate(state, len(draft) - i)
                logits = outs[i][None]
                break
            input_ids = torch.cat([input_ids, torch.tensor([[token]])], dim=-1)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if bool(stop(input_ids, scores)[0]):
                unfinished[0] = 0
                break
        if unfinished.max() == 0:
            break
    if streamer is not None:
        streamer.end()
    return input_ids
