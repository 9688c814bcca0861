"""``ImageSDTPSEngine``: torchreid's triplet engine plus camera ids, SDTPS losses, AMP and
the missing-modality table.

What it adds to ``ImageTripletEngine`` (everything else, ``run()`` included, is torchreid's):

- the batch's ``cam_label`` reaches the model in training *and* evaluation (SIE camera
  embedding); ranking still uses ``camid``, the id of the data set's evaluation protocol;
- loss = ``weight_x``·ID (label-smoothed CE) + ``weight_t``·triplet (both torchreid's)
  + ``weight_ratio``·:class:`SelectionRatioLoss`
  + ``weight_align``·:class:`CrossModalAlignmentLoss`, each reported in the loss summary
  (``loss_x``, ``loss_t``, ``loss_ratio``, ``loss_align``), so torchreid's printed lines and
  tensorboard scalars show them;
- ``modality_dropout`` / ``dropout_subsets``: training for missing modalities
  (:class:`~torchreid_sdtps.engine.modality_dropout.ModalityDropout`): random samples lose a
  random allowed subset of their modalities, removed by ``zero_modalities`` exactly as the
  missing-modality evaluation removes them; the alignment loss then leaves the pairs with an
  absent modality out (the model, built with ``mask_missing=True``, sees the absence itself);
- ``use_amp``: ``torch.autocast`` (float16) + ``GradScaler`` for training on CUDA; float32 on
  the CPU. Evaluation runs in float32 (as DeMo's) unless ``eval_amp`` asks for autocast;
- ``test()`` returns rank-1 like torchreid and fills ``last_results`` (mAP, CMC, R1/R5/R10
  per target); :meth:`evaluate` returns that dict; :meth:`evaluate_missing` zeroes the named
  modalities' input images in query and gallery (as DeMo does) and ranks each setting;
- checkpoints in torchreid's format (written by :class:`~torchreid_sdtps.checkpoint.Checkpointer`,
  readable by torchreid's ``resume_from_checkpoint`` / ``load_pretrained_weights``) that also hold the
  Python/NumPy/torch RNG states and the AMP scaler; :meth:`resume` restores them all, and
  evaluation leaves the RNG untouched, so a resumed run ends where an uninterrupted one does.
"""
from __future__ import annotations

import contextlib
import logging
import os.path as osp
import time
from collections.abc import Sequence
from typing import Any

import torch

from .. import compat
from ..checkpoint import Checkpointer, Loaded, meta_of
from ..choices import MODALITIES
from ..losses.criterion import SDTPSCriterion
from ..metrics.selection import evaluate_selection, format_selection
from ..utils.modalities import zero_modalities
from .evaluation import (
    DEFAULT_MISSING_SETTINGS,
    evaluating,
    format_table,
    metric_row,
    parse_setting,
    rank_split,
    results_summary,
)
from .hooks import EngineHook, HookList
from .modality_dropout import ModalityDropout
from .options import EngineOptions
from .state import get_rng_state, rng_fork, set_rng_state

# the helpers stay importable from here (their homes are .state and .evaluation)
__all__ = [
    "ImageSDTPSEngine", "DEFAULT_MISSING_SETTINGS", "format_table", "get_rng_state",
    "set_rng_state", "rng_fork", "parse_setting",
]

logger = logging.getLogger(__name__)


_TripletBase = compat.engine().ImageTripletEngine


class ImageSDTPSEngine(_TripletBase):
    """Triplet engine for multi-modal SDTPS models (see the module doc).

    Args:
        datamanager, model, optimizer, scheduler: torchreid's.
        options: the :class:`~torchreid_sdtps.engine.options.EngineOptions` (default: its
            defaults); ``**changes`` replace fields of it by name (``weight_align=0.0``,
            ``margin=0.3``... torchreid's keyword arguments among them).
        hooks: :class:`~torchreid_sdtps.engine.hooks.EngineHook` instances called after each
            step, epoch and evaluation (kept in :attr:`hooks`).

    The loss comes from :attr:`criterion`
    (:class:`~torchreid_sdtps.losses.criterion.SDTPSCriterion`).
    """

    def __init__(self, datamanager: Any, model: torch.nn.Module, optimizer: Any,
                 scheduler: Any = None, options: EngineOptions | None = None,
                 hooks: Sequence[EngineHook] = (), **changes: Any) -> None:
        opts = options if options is not None else EngineOptions()
        opts = opts.replace(**changes) if changes else opts
        super().__init__(datamanager, model, optimizer, margin=opts.margin,
                         weight_t=opts.weight_t, weight_x=opts.weight_x, scheduler=scheduler,
                         use_gpu=opts.use_gpu, label_smooth=opts.label_smooth)
        del self.criterion_t, self.criterion_x  # torchreid's: the criterion holds the terms
        self.options = opts
        self.criterion = SDTPSCriterion(opts, datamanager.num_train_pids, use_gpu=self.use_gpu)
        self.hooks = HookList(hooks)
        self.best_on_test = bool(opts.best_on_test)
        self.best_test_map = -1.0
        if self.use_gpu:
            self.model.cuda()  # in place: the optimizer keeps its parameter references
        self.use_amp = bool(opts.use_amp) and self.use_gpu
        if opts.use_amp and not self.use_gpu:
            logger.info("use_amp=True ignored: CUDA is not in use, training in float32")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.eval_amp = bool(opts.eval_amp) and self.use_gpu
        if opts.eval_amp and not self.use_gpu:
            logger.info("eval_amp=True ignored: CUDA is not in use, evaluating in float32")
        self.last_results: dict[str, dict[str, Any]] = {}
        self.last_checkpoint: str | None = None
        self._zeroed: tuple[int, ...] = ()
        train_set = getattr(getattr(datamanager, "train_loader", None), "dataset", None)
        self.modality_dropout = ModalityDropout(
            opts.modality_dropout, opts.dropout_subsets,
            getattr(train_set, "modalities", MODALITIES))
        self._eval_cam: torch.Tensor | None = None
        # parameters the model froze itself (e.g. BNNeck biases); torchreid's
        # open_all_layers() would unfreeze them every epoch
        self._frozen = [p for p in model.parameters() if not p.requires_grad]

    # ------------------------------------------------------------------ data parsing
    @staticmethod
    def _cam_label(data: dict) -> torch.Tensor | None:
        cam = data.get("cam_label")
        return None if cam is None else torch.as_tensor(cam, dtype=torch.long)

    def parse_data_for_train(self, data: dict) -> tuple:
        """``(imgs (B,M,3,H,W), pids, cam_label or None)``."""
        return data["img"], data["pid"], self._cam_label(data)

    def parse_data_for_eval(self, data: dict) -> tuple:
        """torchreid's ``(imgs, pids, camids)``; ``cam_label`` is kept for
        :meth:`extract_features`, and the modalities of the current missing setting zeroed."""
        imgs, pids, camids = data["img"], data["pid"], data["camid"]
        self._eval_cam = self._cam_label(data)
        if self._zeroed:
            imgs = zero_modalities(imgs, self._zeroed)
        return imgs, pids, camids

    def _autocast(self, enabled: bool | None = None) -> contextlib.AbstractContextManager:
        if self.use_amp if enabled is None else enabled:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        """Features of one evaluation batch, with the batch's camera labels."""
        cam, self._eval_cam = self._eval_cam, None
        if cam is not None:
            cam = cam.to(input.device)
        with self._autocast(self.eval_amp):
            feats = self.model(input, cam_label=cam)
        return feats.float()

    # ------------------------------------------------------------------ training
    def two_stepped_transfer_learning(self, epoch: int, fixbase_epoch: int, open_layers: Any,
                                      model: Any = None) -> None:
        """torchreid's, then re-freeze the parameters the model froze at construction."""
        super().two_stepped_transfer_learning(epoch, fixbase_epoch, open_layers, model)
        for p in self._frozen:
            p.requires_grad_(False)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """torchreid's epoch of training, then the ``after_epoch`` hooks."""
        out = super().train(*args, **kwargs)
        self.hooks.call("after_epoch", self, self.epoch)
        return out

    def forward_backward(self, data: dict) -> dict[str, float]:
        """One optimisation step; returns the loss summary torchreid prints and logs."""
        step = (self.epoch, getattr(self, "batch_idx", 0))
        self.hooks.call("before_step", self, *step)
        imgs, pids, cams = self.parse_data_for_train(data)
        present = None
        # prob 0 (or an epoch before dropout_start) draws nothing: the plain step, bit for bit
        if self.modality_dropout.active and self.epoch >= self.options.dropout_start:
            removed = self.modality_dropout.sample(imgs.shape[0])
            imgs, present = zero_modalities(imgs, removed), ~removed
        if self.use_gpu:
            imgs, pids = imgs.cuda(), pids.cuda()
            cams = cams.cuda() if cams is not None else None
        with self._autocast():
            outputs = self.model(imgs, cam_label=cams, return_aux=True)
        loss, summary = self.criterion(outputs, pids, present)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at epoch {self.epoch + 1}, "
                                     f"batch {getattr(self, 'batch_idx', 0) + 1}: {summary}")

        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.hooks.call("after_step", self, *step, summary)
        return summary

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate(self, dataset_name: str = "", query_loader: Any = None,
                  gallery_loader: Any = None, dist_metric: str = "euclidean",
                  normalize_feature: bool = False, visrank: bool = False,
                  visrank_topk: int = 10, save_dir: str = "", use_metric_cuhk03: bool = False,
                  ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> tuple:
        """torchreid's ``_evaluate`` flow (extract, distance, optional re-ranking, the stock
        ``evaluate_rank`` with protocol camids); also records the full result."""
        start = time.time()
        ranked = rank_split(self, query_loader, gallery_loader, dist_metric, normalize_feature,
                            rerank, ranks, use_metric_cuhk03)
        res = ranked.result
        # recall/precision of the kept tokens against the data set's cue masks (None: no masks)
        selection = evaluate_selection(self.model, query_loader)
        if selection is not None:
            res["selection"] = selection
            logger.info("%s: %s", dataset_name, format_selection(selection))
        self.last_results[dataset_name] = res
        logger.info("%s: query %d, gallery %d, %d-d features, %.1fs; mAP %.1f%%  %s",
                    dataset_name, res["num_query"], res["num_gallery"], ranked.feat_dim,
                    time.time() - start, 100 * res["mAP"],
                    "  ".join(f"Rank-{r} {100 * res[f'R{r}']:.1f}%" for r in ranks))
        if self.writer is not None:
            for r in (5, 10):
                self.writer.add_scalar(f"Test/{dataset_name}/rank{r}", res[f"R{r}"], self.epoch)
        if visrank:
            compat.utils().visualize_ranked_results(
                ranked.distmat, self.datamanager.fetch_test_loaders(dataset_name),
                self.datamanager.data_type, width=self.datamanager.width,
                height=self.datamanager.height,
                save_dir=osp.join(save_dir, "visrank_" + dataset_name), topk=visrank_topk)
        return res["cmc"][0], res["mAP"]

    def test(self, *args: Any, **kwargs: Any) -> float:
        """torchreid's ``test`` (returns rank-1 of the last target) without touching the RNG;
        :attr:`last_results` holds mAP, R1/R5/R10 and the CMC of every target."""
        self.last_results = {}
        with rng_fork():
            rank1 = super().test(*args, **kwargs)
        self.hooks.call("after_eval", self, self.epoch, self.last_results)
        return rank1

    def evaluate(self, dataset_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Rank every target (or ``dataset_name``) and return ``{"mAP", "R1", "R5", "R10",
        "cmc", ...}`` of that data set (the first target by default)."""
        self.test(**kwargs)
        name = dataset_name or next(iter(self.last_results))
        if name not in self.last_results:
            raise KeyError(f"'{name}' is not a test target; targets: {list(self.last_results)}")
        return self.last_results[name]

    def modalities(self, dataset_name: str | None = None) -> tuple[str, ...]:
        """Modality names of a test data set (class attribute ``modalities``)."""
        name = dataset_name or next(iter(self.test_loader))
        return tuple(getattr(self.test_loader[name]["query"].dataset, "modalities",
                             MODALITIES))

    @torch.no_grad()
    def evaluate_missing(self, settings: Sequence[str] = DEFAULT_MISSING_SETTINGS,
                         dataset_name: str | None = None, dist_metric: str = "euclidean",
                         normalize_feature: bool = False, rerank: bool = False,
                         ranks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
        """Rank with the modalities named by each setting zeroed in query and gallery.

        Returns ``{setting: {"mAP", "R1", "R5", "R10", ...}}`` (fractions; R1/R5/R10 always,
        plus any other of ``ranks``) and logs the table.
        """
        name = dataset_name or next(iter(self.test_loader))
        if name not in self.test_loader:
            raise KeyError(f"'{name}' is not a test target; targets: {list(self.test_loader)}")
        mods = self.modalities(name)
        parsed = {s: parse_setting(s, mods) for s in settings}
        loaders = self.test_loader[name]
        rows: dict[str, dict[str, float]] = {}
        with evaluating(self):
            try:
                for setting, zeroed in parsed.items():
                    self._zeroed = zeroed
                    rows[setting] = metric_row(rank_split(
                        self, loaders["query"], loaders["gallery"], dist_metric,
                        normalize_feature, rerank, ranks).result)
            finally:
                self._zeroed = ()
        logger.info("%s", format_table(rows, title=f"Missing modalities ({name}): zeroed "
                                                    "inputs in query and gallery",
                                       first="missing"),
                    extra={"show": True})  # a result: on the console of the CLI's run log too
        return rows

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's checkpoint dict (+ RNG states, AMP scaler, results and the model's
        meta, :func:`~torchreid_sdtps.checkpoint.meta_of`), atomic write; with
        ``best_on_test`` also the best checkpoint when the first target's mAP improved."""
        if self.best_on_test and self.last_results and not is_best:
            first = next(iter(self.last_results.values()))
            if first["mAP"] > self.best_test_map:
                self.best_test_map = float(first["mAP"])
                is_best = True
                logger.info("best-on-test checkpoint (selected on the TEST set, optimistic): "
                            "epoch %d, mAP %.1f%%", epoch + 1, 100 * first["mAP"])
        for name in self.get_model_names():
            state: dict[str, Any] = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "rank1": float(rank1),
                "optimizer": self._optims[name].state_dict(),
                "rng_state": get_rng_state(),
                "scaler": self.scaler.state_dict(),
                "results": results_summary(self.last_results),
            }
            if self._scheds[name] is not None:
                state["scheduler"] = self._scheds[name].state_dict()
            self.last_checkpoint = Checkpointer(save_dir).save(
                state, name, is_best=is_best, meta=meta_of(self._models[name]))

    def resume(self, source: str | Loaded) -> int:
        """Load weights (strictly), optimizer and scheduler, then the RNG states and AMP
        scaler from ``source`` (a path or what :meth:`Checkpointer.read` read); returns the
        epoch to start from."""
        start_epoch, ckpt = Checkpointer.resume(source, self.model, self.optimizer,
                                                self.scheduler)
        fpath = source.path if isinstance(source, Loaded) else source
        if "rng_state" in ckpt:
            set_rng_state(ckpt["rng_state"])
        else:
            logger.warning("checkpoint '%s' holds no RNG state: the resumed run will not "
                           "repeat the uninterrupted one exactly", fpath)
        if self.use_amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        return start_epoch
