"""A `transformers.Trainer` that logs each objective's loss part and counts the tokens it trains on."""

import torch
from torch import Tensor
from transformers import Trainer

LOSS_PARTS = ("clm_loss", "fep_loss", "sup_loss")


class LossPartMeans:
    """Running sums of the loss parts since the last read, averaged over all processes when read."""

    def __init__(self):
        # Sums stay on the model's device so that adding a batch does not wait for it.
        self.sums: Tensor | None = None
        self.weights = [0.0] * len(LOSS_PARTS)

    def add(self, outputs, weight: float) -> None:
        """Add one batch's parts with the given weight; parts the objective lacks are not reported."""
        device = outputs.loss.device
        parts = []
        for index, name in enumerate(LOSS_PARTS):
            value = outputs.get(name)
            if value is None:
                parts.append(torch.zeros((), device=device))
            else:
                parts.append(value.detach().float() * weight)
                self.weights[index] += weight
        sums = torch.stack(parts)
        self.sums = sums if self.sums is None else self.sums + sums

    def pop(self, accelerator, prefix: str) -> dict[str, float]:
        """Return `{prefix + part: mean}` over every process and reset; every process must call it."""
        if self.sums is None:
            return {}
        weights = torch.tensor(self.weights, device=self.sums.device)
        totals = accelerator.reduce(torch.cat([self.sums, weights]), reduction="sum").tolist()
        sums, weights = totals[: len(LOSS_PARTS)], totals[len(LOSS_PARTS) :]
        self.sums = None
        self.weights = [0.0] * len(LOSS_PARTS)
        return {
            prefix + name: sums[index] / weights[index] for index, name in enumerate(LOSS_PARTS) if weights[index] > 0
        }


class UserModelTrainer(Trainer):
    """Trainer for `UserModel` batches from `SegmentCollator`.

    Each train log entry gets `clm_loss` / `fep_loss` / `sup_loss` (means over the micro-batches since
    the last entry, the same weighting as the Trainer's `loss`), each evaluation `eval_clm_loss` etc.
    (means over evaluated rows). `eval_data_collator` replaces the training collator for evaluation, so
    that evaluation can sample deterministic segments.
    """

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self._train_parts = LossPartMeans()
        self._eval_parts = LossPartMeans()
        self._train_tokens = torch.zeros((), dtype=torch.long, device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            self._train_parts.add(outputs, weight=1.0)
            self._train_tokens += inputs["attention_mask"].sum()
        else:
            self._eval_parts.add(outputs, weight=float(inputs["input_ids"].shape[0]))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def get_eval_dataloader(self, eval_dataset=None):
        # The Trainer builds every data loader from `data_collator` and `args.dataloader_drop_last`.
        # Evaluation swaps in its own collator and keeps its last partial batch, so every test user counts.
        train_collator, drop_last = self.data_collator, self.args.dataloader_drop_last
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator, self.args.dataloader_drop_last = train_collator, drop_last

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The Trainer calls `log` on every process, so the parts can be reduced across processes here.
        if "loss" in logs:
            logs.update(self._train_parts.pop(self.accelerator, prefix=""))
        elif "eval_loss" in logs:
            logs.update(self._eval_parts.pop(self.accelerator, prefix="eval_"))
        super().log(logs, start_time)

    def pop_train_tokens(self) -> int:
        """Real (non-padding) tokens trained on since the last call, summed over processes."""
        total = int(self.accelerator.reduce(self._train_tokens.clone(), reduction="sum").item())
        self._train_tokens.zero_()
        return total
