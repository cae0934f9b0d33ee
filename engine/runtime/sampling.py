"""Turning logits into answers: label probabilities, nucleus sampling, where an answer stops."""

from __future__ import annotations

import math

import numpy as np

# End-of-turn markers of the chat templates we meet (ChatML, Gemma, Llama 3).
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>")


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: EOS and the chat templates' end-of-turn markers."""
    vocab = tokenizer.get_vocab()
    return sorted({tokenizer.eos_token_id, *(
        vocab[w] for w in END_OF_TURN if w in vocab)} - {None})


def sample(logits, temperature: float, top_p: float, rng) -> int:
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    kept = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=kept))
