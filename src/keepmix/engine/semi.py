"""Semi-supervised training with UDA (Xie et al., arXiv 1904.12848) — KeepAugment's Table 7 loop.

A recipe with ``semi.labels: N`` (:class:`keepmix.recipes.SemiConfig`) trains with
:class:`SemiTrainer` — ``keepmix train``, ``keepmix experiment`` and :class:`keepmix.train.Trainer`
pick it by themselves. It is the supervised :class:`~keepmix.train.Trainer` (model, optimiser,
schedule, evaluation, metrics CSV, checkpoints, exact resume) with another data split and another step:

.. code-block:: text

    labelled set   ← N training images, N/K per class (stratified_subset, seeded by data.subset_seed)
    unlabelled set ← every other training image; its labels never enter the loss
    each step:       x_l, y_l ← the next labelled batch (B = optim.batch_size; the loader cycles)
                     x_u      ← an unlabelled batch of μ·B (μ = semi.unlabeled_ratio); an epoch is one
                                pass over the unlabelled set
                     weak     ← x_l, x_u as the loader made them (crop with padding, flip: UDA's weak view)
                     strong   ← ops(x_u, None): the recipe's ops (RandAugment, KeepRandAugment…) without
                                targets — model saliency then takes the predicted class (saliency.gradient
                                with targets=None, KeepAugment Section 4.3), in eval mode, model untouched
                     z_l, z_w, z_s ← model(cat[x_l, x_u, strong])     (one forward, BatchNorm in train mode)
                     loss     ← tsa_cross_entropy(z_l, y_l, η_t) + λ · uda_consistency(z_w, z_s, τ, β)
                                (η_t = tsa_threshold(step, epochs·steps_per_epoch, K, semi.tsa);
                                z_w is detached inside uda_consistency: the gradient flows only
                                through the labelled and the strong logits)

One forward of the concatenated batch, as UDA's reference setting does, so BatchNorm's batch
statistics cover all three parts; the weak logits come from that same forward, detached (θ̃ of UDA's
Eq. 1 is θ without gradient). Metrics per epoch (``metrics.csv``): ``train_loss`` (the total),
``train_acc`` (labelled batches), ``train_sup`` (TSA cross-entropy), ``train_consistency``,
``train_mask`` (share of unlabelled images above β), ``train_tsa`` (share of labelled images TSA kept),
``tsa_threshold`` (η at the epoch's last step) and ``train_pseudo_acc`` — how often the weak view's
predicted class equals the unlabelled image's withheld label: a diagnostic only, the labels never
reach the loss. Each is the mean of its per-step values over the epoch's steps.

Not supported with ``semi.labels`` (refused by :meth:`keepmix.recipes.TrainConfig.validate`, naming
the field): ``jsd_weight``, the early head, the saliency memory and streamed data; ops that mix labels
(refused here, naming the op). Under ``torchrun`` both loaders are sharded like the supervised one.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

import torch

from ..losses import tsa_cross_entropy, tsa_threshold, uda_consistency
from ..recipes import TrainConfig
from ..train import (OpStats, RunData, ShardedLoader, Trainer, _is_terminal, _spec_has_policy, _take,
                     autocast_context, device_run_data, load_sets)
from .distributed import all_reduce_sum

__all__ = ["SemiLoader", "SemiTrainer", "labeled_split", "prepare_semi_data"]

#: the per-step metrics a semi step adds, in the order of its sums vector (after loss·B, correct, B)
SEMI_METRICS = ("train_sup", "train_consistency", "train_mask", "train_tsa", "train_pseudo_acc")


def labeled_split(labels: torch.Tensor, count: int, num_classes: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(labelled, unlabelled)`` indices: ``count / num_classes`` images of every class, and all the others.

    The labelled images are :func:`keepmix.data.stratified_subset` with ``per_class = count / K``
    drawn with a generator seeded ``seed`` (the recipe's ``data.subset_seed``: the same split for every
    training seed and arm); the unlabelled set is the complement. Both int64, sorted ascending.
    Raises ValueError naming ``semi.labels`` when ``count`` is not a multiple of K, or leaves no image
    unlabelled, or a class has fewer than ``count / K`` images.
    """
    from ..data import stratified_subset
    if count % num_classes:
        raise ValueError(f"semi.labels must be a multiple of the number of classes ({num_classes}) so that every "
                         f"class gets the same number of labels, got {count}")
    if count >= labels.shape[0]:
        raise ValueError(f"semi.labels ({count}) must be smaller than the training set ({labels.shape[0]} images): "
                         "the rest is the unlabelled set")
    try:
        chosen = stratified_subset(labels, per_class=count // num_classes,
                                   generator=torch.Generator().manual_seed(seed), num_classes=num_classes)
    except ValueError as error:
        raise ValueError(f"semi.labels {count}: {error}") from None
    rest = torch.ones(labels.shape[0], dtype=torch.bool)
    rest[chosen] = False
    return chosen, torch.nonzero(rest).flatten()


class SemiLoader:
    """Pairs ``(labelled batch, unlabelled batch)``: one pass over the unlabelled loader is an epoch,
    the labelled loader runs on through its own epochs as it is drawn from.

    ``len()`` is the unlabelled loader's; ``state_dict`` / ``load_state_dict`` hold both loaders'
    positions (each resumes exactly, so a checkpoint mid-epoch resumes exactly).
    """

    def __init__(self, labeled, unlabeled):
        self.labeled, self.unlabeled = labeled, unlabeled
        self._labeled_batches = None

    def __len__(self) -> int:
        return len(self.unlabeled)

    def __iter__(self):
        for batch in self.unlabeled:
            yield self._next_labeled(), batch

    def _next_labeled(self):
        for _ in range(2):
            if self._labeled_batches is None:
                self._labeled_batches = iter(self.labeled)
            try:
                return next(self._labeled_batches)
            except StopIteration:  # its epoch ended: the next iter() starts the next one
                self._labeled_batches = None
        raise ValueError("the labelled loader yields no batch: lower optim.batch_size or raise semi.labels")

    def state_dict(self) -> Dict[str, Any]:
        return {"labeled": self.labeled.state_dict(), "unlabeled": self.unlabeled.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.labeled.load_state_dict(state["labeled"])
        self.unlabeled.load_state_dict(state["unlabeled"])
        self._labeled_batches = None


def prepare_semi_data(config: TrainConfig, device: torch.device, job, *, raw: bool,
                      cache: Optional[Dict[str, Any]] = None) -> RunData:
    """The recipe's data for UDA: a :class:`RunData` whose ``train`` is a :class:`SemiLoader`.

    The training split (after ``data.train_size`` / ``data.fraction``) is split by
    :func:`labeled_split`; the labelled loader draws batches of ``optim.batch_size`` (global) and the
    unlabelled one of ``semi.unlabeled_ratio`` times that, both dropping their last incomplete batch,
    both cropping and flipping on the device (``data.crop_padding``, ``data.flip``) and, unless
    ``raw``, normalising. Loader seeds derive from the run's seed, as in :func:`keepmix.train.prepare_data`.
    """
    from .. import data as data_module
    spec = config.data
    if spec.crop == "resized":
        raise ValueError("data.crop 'resized' needs the streamed input path, which semi.labels does not support; "
                         "use data.crop 'pad' or 'auto'")
    images, labels, eval_images, eval_labels, loaded = load_sets(spec, cache)
    num_classes = loaded.num_classes
    mean, std = tuple(loaded.mean), tuple(loaded.std)
    labeled, unlabeled = labeled_split(labels, config.semi.labels, num_classes, spec.subset_seed)
    batch = config.optim.batch_size
    if batch % job.world_size:
        raise ValueError(f"optim.batch_size {batch} must be divisible by the number of processes {job.world_size}")
    per_rank = batch // job.world_size
    if labeled.shape[0] < batch:
        raise ValueError(f"semi.labels ({labeled.shape[0]}) gives no labelled batch of optim.batch_size {batch}")
    if unlabeled.shape[0] < batch * config.semi.unlabeled_ratio:
        raise ValueError(f"the unlabelled set ({unlabeled.shape[0]} images) gives no batch of "
                         f"semi.unlabeled_ratio × optim.batch_size = {batch * config.semi.unlabeled_ratio}")

    def loader(indices: torch.Tensor, size: int, stream: int):
        made = data_module.DeviceLoader(
            images[indices], labels[indices], batch_size=size, shuffle=True, drop_last=True,
            generator=torch.Generator().manual_seed(data_module.derive_seed(config.seed, stream)), device=device,
            mean=None if raw else mean, std=None if raw else std, augment=spec.crop_padding > 0 or spec.flip,
            crop_padding=spec.crop_padding, flip=spec.flip)
        return ShardedLoader(made, job.rank, job.world_size) if job.enabled else made

    train = SemiLoader(loader(labeled, per_rank, 1), loader(unlabeled, per_rank * config.semi.unlabeled_ratio, 2))
    return device_run_data(train, images, labels, eval_images, eval_labels, loaded, config, device, job, raw=raw)


class SemiTrainer(Trainer):
    """One UDA run of a :class:`TrainConfig` with ``semi.labels`` set (see the module docstring).

    Built like :class:`~keepmix.train.Trainer` (same arguments); ``data`` must be None — the split
    into labelled and unlabelled images is made from the recipe's data set.
    """

    def _build(self, data: Optional[RunData], cache: Optional[Dict[str, Any]]) -> None:
        config = self.config
        if not config.semi.enabled:
            raise ValueError("semi.labels is null: SemiTrainer needs a semi-supervised config")
        if data is not None:
            raise ValueError("data: a semi-supervised run splits the recipe's own data set (semi.labels); "
                             "pass data=None")
        raw = any(_spec_has_policy(spec) for spec in config.ops)
        super()._build(prepare_semi_data(config, self.device, self.job, raw=raw, cache=cache), cache)
        for name, op in self.augment.raw + self.augment.normalized:
            if getattr(op, "mixes_labels", False):
                raise ValueError(f"ops: {name!r} mixes labels; the strong view of unlabelled images needs "
                                 "label-preserving ops (rand_augment, keep_rand_augment, cutout…)")
        self.total_steps = config.optim.epochs * self.steps_per_epoch
        self.tsa_eta = tsa_threshold(0, self.total_steps, self.num_classes, config.semi.tsa)

    # ------------------------------------------------------------------ one step
    def train_step(self, labeled, unlabeled, geometry=None) -> torch.Tensor:
        """One UDA step on a labelled and an unlabelled batch; returns device sums (no host sync):
        ``[loss·B, correct, B, sup, consistency, mask, tsa kept, pseudo-label accuracy]``.

        ``labeled`` is ``(images, labels)``; ``unlabeled`` is ``(images, withheld labels)`` — the
        withheld labels feed only the pseudo-label accuracy, never the loss.
        """
        from ..train import learning_rate
        semi = self.config.semi
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.steps_per_epoch, self.config.optim)
        (x_l, y_l), (x_u, y_u) = labeled, unlabeled
        strong, _ = self.augment(x_u, None)          # saliency (if any) inside, from the predicted class
        stacked = torch.cat([self.data.normalize(x_l), self.data.normalize(x_u), strong])
        if self.config.channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.config.amp):
            logits, _ = self.train_net(stacked, None)
        logits = logits.float()
        b, u = x_l.shape[0], x_u.shape[0]
        z_l, z_w, z_s = logits[:b], logits[b:b + u], logits[b + u:]
        self.tsa_eta = tsa_threshold(self.step, self.total_steps, self.num_classes, semi.tsa)
        sup, kept = tsa_cross_entropy(z_l, y_l, self.tsa_eta, self.config.label_smoothing)
        consistency, mask = uda_consistency(z_w, z_s, semi.temperature, semi.threshold)
        total = sup + semi.weight * consistency
        sums = self._step(total, total, z_l, y_l, b)
        pseudo = z_w.detach().argmax(dim=1).eq(y_u).float().mean()
        return torch.cat([sums, torch.stack([sup.detach(), consistency.detach(), mask, kept, pseudo])])

    def train_epoch(self) -> Dict[str, float]:
        """One pass over the unlabelled loader (capped at ``max_steps_per_epoch``); returns the epoch's metrics."""
        self.net.train()
        self.augment.stats = OpStats()
        sums = torch.zeros(3 + len(SEMI_METRICS), device=self.device)
        bar = None
        if self.config.progress and self.job.is_main and _is_terminal(sys.stderr):
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.config.optim.epochs}",
                       leave=False, dynamic_ncols=True, file=sys.stderr)
        steps = 0
        for labeled, unlabeled in _take(self.data.train, self.steps_per_epoch):
            sums += self.train_step(labeled, unlabeled)
            steps += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        totals = all_reduce_sum(sums, self.job).cpu()
        stats = self.augment.stats.summary(self.job, self.device)
        count = float(totals[2])
        per_step = totals[3:] / (steps * self.job.world_size)
        row = {"train_loss": float(totals[0]) / count, "train_acc": 100.0 * float(totals[1]) / count}
        row.update({name: float(value) for name, value in zip(SEMI_METRICS, per_step)})
        row["train_pseudo_acc"] *= 100.0
        row["tsa_threshold"] = self.tsa_eta
        return {**row, **stats}

    def _epoch_line(self, row: Dict[str, Any]) -> str:
        line = super()._epoch_line(row)
        head, _, tail = line.rpartition("  ")
        return (f"{head}  sup {row['train_sup']:.4f} cons {row['train_consistency']:.4f} "
                f"mask {100 * row['train_mask']:.0f}% tsa {100 * row['train_tsa']:.0f}%  {tail}")
