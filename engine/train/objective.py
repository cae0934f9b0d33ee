"""What a forward pass is scored on: batches of token ids and one loss per perturbation copy.

Rows are left-padded with explicit position ids, so every row's last prompt token (the answer
position in classification) is the last column, and completions (SFT) are right-aligned. The
model is then asked for logits of only the final columns (`logits_to_keep`): the vocabulary
projection, the largest matmul of a small model, runs on a handful of positions instead of all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.api.errors import UserError
from engine.data.dataset import Example


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, L), left-padded
    attention_mask: torch.Tensor  # (b, L)
    position_ids: torch.Tensor  # (b, L)
    # classification: label index per row; sft: next-token targets of the kept columns, with
    # -100 where no loss is taken.
    targets: torch.Tensor
    keep: int  # columns of logits needed (1 for classification)
    tokens: int  # non-padding tokens in the batch (for tokens/s)

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: range) -> Batch:
        """These rows of the batch, at the batch's width (a worker's block of it)."""
        mask = self.attention_mask[rows.start:rows.stop]
        return Batch(self.input_ids[rows.start:rows.stop], mask,
                     self.position_ids[rows.start:rows.stop], self.targets[rows.start:rows.stop],
                     self.keep, int(mask.sum()))

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.targets.to(device),
            self.keep,
            self.tokens,
        )


class Objective:
    """Tokenises examples and scores a model on them, one loss per copy of the tiled batch."""

    def __init__(self, tokenizer, task: str, max_seq_len: int, label_words: list[str]) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.max_seq_len = max_seq_len
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.start_id = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None),
                             self.pad_id)
        self.label_ids: torch.Tensor | None = None
        if task == "classification":
            self.label_ids = torch.tensor([self._label_token(word) for word in label_words])

    def _label_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if not ids:
            raise UserError(f"label word {word!r} encodes to no token; pick a real word")
        # The paper scores the first token of each label word; words that share it are ambiguous.
        return ids[0]

    def check_label_words(self, label_words: list[str]) -> None:
        ids = self.label_ids.tolist()
        if len(set(ids)) != len(ids):
            raise UserError(
                f"label_words {label_words} start with the same token for this tokenizer; "
                "pick words that differ in their first token (a leading space usually helps)"
            )

    def encode(self, examples: list[Example]) -> Batch:
        rows, completions = [], []
        for example in examples:
            # Every scored token needs a token before it: an empty prompt becomes BOS (or EOS).
            prompt = self.tokenizer.encode(example.prompt, add_special_tokens=True) or [self.start_id]
            if self.task == "classification":
                rows.append(prompt[-self.max_seq_len :])
                completions.append(0)
                continue
            completion = self.tokenizer.encode(example.completion, add_special_tokens=False)
            if self.tokenizer.eos_token_id is not None:
                completion = completion + [self.tokenizer.eos_token_id]
            completion = completion[: self.max_seq_len - 1]
            prompt = prompt[-(self.max_seq_len - len(completion)) :]
            rows.append(prompt + completion)
            completions.append(len(completion))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        if self.task == "classification":
            targets = torch.tensor([example.label for example in examples])
            keep = 1
        else:
            # Logits at column t predict token t+1: keep the columns from one before the longest
            # completion's first token to the second-to-last.
            keep = max(completions)
            targets = torch.full((len(rows), keep), -100, dtype=torch.long)
            for i, n in enumerate(completions):
                targets[i, keep - n :] = ids[i, width - n :]
        return Batch(ids, mask, positions, targets, keep, int(mask.sum()))

    def logits(self, model: torch.nn.Module, batch: Batch, copies: int, tile: bool = True) -> torch.Tensor:
        """Logits of the kept columns for the batch tiled `copies` times: (copies*b, keep, V).
        `tile=False`: the model tiles it itself (a LoRA shared prefix, engine/lora.py)."""
        n = copies if tile else 1
        out = model(
            input_ids=batch.input_ids.repeat(n, 1),
            attention_mask=batch.attention_mask.repeat(n, 1),
            position_ids=batch.position_ids.repeat(n, 1),
            logits_to_keep=batch.keep + (self.task == "sft"),
            use_cache=False,
        )
        logits = out.logits
        return logits[:, :-1] if self.task == "sft" else logits

    def losses(self, model: torch.nn.Module, batch: Batch, copies: int, tile: bool = True) -> torch.Tensor:
        """Mean loss of each copy over the batch: shape (copies,)."""
        logits = self.logits(model, batch, copies, tile).float()
        b = batch.rows
        if self.task == "classification":
            scores = logits[:, -1, self.label_ids.to(logits.device)]
            per_row = F.cross_entropy(scores, batch.targets.repeat(copies), reduction="none")
            return per_row.view(copies, b).mean(1)
        targets = batch.targets.repeat(copies, 1)
        per_token = token_losses(logits, targets).view(copies, -1)
        counted = (targets != -100).view(copies, -1).sum(1).clamp(min=1)
        return per_token.sum(1) / counted

    def weight(self, batch: Batch) -> int:
        """What a batch's mean loss (`losses`) averages over: its rows for classification, its
        scored tokens for SFT. A block of the batch's rows weighs its part of that mean."""
        if self.task == "classification":
            return batch.rows
        return int((batch.targets != -100).sum())

    def score(self, model: torch.nn.Module, batch: Batch) -> tuple[float, int]:
        """(summed loss, correct predictions) of one copy; correct is 0 for SFT."""
        logits = self.logits(model, batch, 1).float()
        if self.task == "classification":
            scores = logits[:, -1, self.label_ids.to(logits.device)]
            loss = F.cross_entropy(scores, batch.targets, reduction="sum")
            return float(loss), int((scores.argmax(-1) == batch.targets).sum())
        loss = token_losses(logits, batch.targets)
        counted = (batch.targets != -100).sum(1).clamp(min=1)
        return float((loss.sum(1) / counted).sum()), 0


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log p(target) at every position of (rows, columns, V) logits; 0 where the target is -100.

    cross_entropy(ignore_index=-100) gives the same numbers, but torch.export (torch 2.13)
    cannot decompose its nll_loss with reduction="none" over a dynamic number of columns, which
    the ExecuTorch training program (engine/executorch_train) traces.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -picked * (targets != -100)
