"""The generation loop: one code path for txt2img, img2img and inpainting and for every model family.

For each task: plan the deterministic work list (:mod:`.planner`) → drop what the dataset already
holds (resume) → in batches:

1. encode the prompts (the model's :class:`~diffugen.generation.family.ModelFamily`);
2. run the task's diffusers pipeline with attention capture;
3. per-word heatmaps;
4. DAAM labels (and YOLO labels when the config has a label model);
5. files under the output root, then complete samples into FiftyOne.

Only the planner and :func:`task_inputs` know how the three tasks differ; only the family knows
how model families differ.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import cv2
import fiftyone as fo
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..common import REVIEW_MIN_SCORE, ProgressFn, report
from ..config import DiffuGenConfig
from ..errors import DiffuGenError
from ..labels.daam import label_heatmaps, missing_words, to_fiftyone
from ..prompts import WorkItem
from ..store.dataset import class_ids as dataset_class_ids
from ..store.dataset import class_heatmap_field, existing_keys, open_dataset
from ..store.files import check_output_root, remove_stale_temporaries, safe_child, write_atomic, write_png
from ..store.repair import drop_incomplete
from ..store.writer import SampleWriter
from .attention import HeatmapCollector
from .embeddings import load_textual_inversions
from .family import families, family_of
from .joint_attention import concept_embedding
from .models import cached_pipeline, resolve_device, set_scheduler
from .planner import inpaint_mask, plan, plan_warnings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

MEDIA_FOLDERS = ("images", "heatmaps", "masks", "masks_yolo")  # under <dataset>/<task>/[<shard>/]


@dataclass
class TaskSummary:
    task: str
    planned: int = 0
    skipped: int = 0  # already in the dataset
    made: int = 0
    unlabeled_words: int = 0  # class words truncated out of the prompt or never attended


@dataclass
class GenerateSummary:
    dataset: str
    tasks: list[TaskSummary] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [f"{t.task}: {t.made} made, {t.skipped} already there, {t.planned} planned" for t in self.tasks]
        return f"dataset {self.dataset!r}: " + "; ".join(rows)


def keep_outside_mask(images: np.ndarray, parents: Sequence[Image.Image], masks: Sequence[np.ndarray]) -> np.ndarray:
    """Inpainting: the parent's pixels outside the mask, the generated ones inside.

    The pipeline keeps the parent's *latents* outside the mask, but the VAE decoder (convolutions and a
    global attention block) spreads a badly generated region over the whole image; pasting the parent
    back makes "only the masked object changes" hold exactly.

    Args:
        images: uint8 ``(batch, H, W, 3)`` generated images.
        parents: the parent images (``H × W``).
        masks: uint8 ``(H, W)``, non-zero where the image may change.
    """
    out = images.copy()
    for i, (parent, mask) in enumerate(zip(parents, masks)):
        keep = mask == 0
        out[i][keep] = np.asarray(parent.convert("RGB"))[keep]
    return out


def task_inputs(cfg: DiffuGenConfig, task: str, items: Sequence[WorkItem], masks: Sequence[np.ndarray] | None,
                size: tuple[int, int]) -> dict:
    """The pipeline arguments that differ between tasks (everything else is shared); ``size``: txt2img's
    ``(height, width)``."""
    if task == "txt2img":
        return {"height": size[0], "width": size[1]}
    images = [Image.open(it.parent.filepath).convert("RGB") for it in items]
    section = getattr(cfg, task)
    kwargs = {"image": images, "strength": section.strength}
    if task == "inpaint":
        kwargs["mask_image"] = [Image.fromarray(m) for m in masks]
        kwargs["height"], kwargs["width"] = images[0].height, images[0].width
    return kwargs


def _batches(items: Sequence[WorkItem], size: int) -> Iterable[list[WorkItem]]:
    # Consecutive items of the same image size (img2img/inpaint parents can differ) up to `size`.
    batch: list[WorkItem] = []
    for it in items:
        if batch and (len(batch) == size or _size_of(it) != _size_of(batch[0])):
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


def _size_of(item: WorkItem) -> tuple[int, int] | None:
    if item.parent is None:
        return None
    md = item.parent["metadata"]
    return (md.width, md.height) if md is not None else None


class Runner:
    """Runs a config's tasks into its dataset; holds the loaded models between tasks and calls.

    ``timings``: set it to a dict and each phase of the loop adds its seconds there (``pipeline``,
    ``heatmaps``, ``labels``, ``files``, ``insert``, ``open_dataset``; device-synchronised), for the benchmarks.
    """

    def __init__(self, cfg: DiffuGenConfig, output_root: str | Path | None = None):
        self.cfg = cfg
        self.root = check_output_root(Path(output_root or cfg.output_root))
        self.media_root = safe_child(self.root, cfg.dataset_name)
        self.timings: dict[str, float] | None = None
        self._models: dict[str, object] = {}
        self._concepts: dict[tuple[int, str], torch.Tensor] = {}
        self._defaults: dict[str, dict] = {}  # per model: its family's call defaults (ModelFamily.call_defaults)
        self._yolo = None
        self._yolo_skipped = False
        self._folders: dict[tuple[str, ...], Path] = {}

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def yolo(self):
        """The supervised labeler of ``label_model`` (loaded once), or ``None`` when there is none to use.

        With ``unsupervised: true`` absent weights are skipped with a warning (DAAM labels suffice, as
        in the original DiffuGen); otherwise absent weights are an error before anything is written.
        """
        lm = self.cfg.label_model
        if lm is None or not lm.weights or self._yolo_skipped:
            return None
        if self._yolo is None:
            from ..labels.yolo import YoloLabeler

            if self.cfg.unsupervised and not Path(lm.weights).expanduser().is_file():
                logger.warning("label_model.weights %s not found: unsupervised is true, so only DAAM labels are made",
                               Path(lm.weights).expanduser().resolve())
                self._yolo_skipped = True
                return None
            device = lm.device or self.cfg.device
            if device == "auto":
                device = "0" if resolve_device("auto").type == "cuda" else "cpu"
            self._yolo = YoloLabeler(lm.weights, self.cfg.dataset_classes(), lm.class_map or None, lm.conf, lm.imgsz,
                                     device, lm.batch_size, class_names=lm.classes, trust_weights=lm.trust_weights)
        return self._yolo

    def pipeline(self, task: str):
        """The pipeline of ``task``: the task's model (loaded once), embeddings and scheduler applied."""
        model = self.cfg.task_value(task, "model")
        if model not in self._models:
            logger.info("loading model %s", model)
            base = cached_pipeline(model, self.cfg.device, self.cfg.dtype, self.cfg.checkpoint_config,
                                   self.cfg.model_family)
            load_textual_inversions(base, self.cfg.textual_inversion)
            base.set_progress_bar_config(disable=True)
            family = family_of(base)
            if self.cfg.heatmap_method not in family.heatmap_methods:
                raise DiffuGenError(f"heatmap_method {self.cfg.heatmap_method!r}: model {model} is a {family.name!r} "
                                    f"model, which offers {list(family.heatmap_methods)}")
            if self.cfg.max_sequence_length is not None and family.long_encoder is None:
                raise DiffuGenError(f"max_sequence_length {self.cfg.max_sequence_length}: model {model} is a "
                                    f"{family.name!r} model, whose prompts have no long text sequence; it applies "
                                    f"to {[f.name for f in families() if f.long_encoder]} models")
            self._models[model] = base
            self._defaults[model] = family.call_defaults(base)
        base = self._models[model]
        pipe = family_of(base).task_pipeline(base, task)
        set_scheduler(pipe, self.cfg.task_value(task, "scheduler"))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def setting(self, task: str, name: str):
        """``steps``, ``guidance_scale``, ``height`` or ``width`` of ``task``: the config's value, else what the
        model's own pipeline uses (FLUX: guidance 3.5, 28 steps, 1024²; SD 1.5: 7.5, 50, 512²). The model
        is loaded if it is not yet."""
        value = self.cfg.task_value(task, name)
        if value is not None:
            return value
        model = self.cfg.task_value(task, "model")
        if model not in self._defaults:
            self.pipeline(task)
        return self._defaults[model][name]

    def _concept(self, pipe: DiffusionPipeline, family, word: str) -> torch.Tensor:
        """ConceptAttention's token for ``word`` (computed once per model and word)."""
        key = (id(pipe.transformer), word)
        if key not in self._concepts:
            self._concepts[key] = concept_embedding(family, pipe, word)
        return self._concepts[key]

    @torch.no_grad()
    def run_batch(self, pipe: DiffusionPipeline, collector: HeatmapCollector, task: str, items: Sequence[WorkItem],
                  masks: Sequence[np.ndarray] | None = None
                  ) -> tuple[np.ndarray, list[list[np.ndarray]], list[list[int]], list[list[tuple[float, float]]]]:
        """Generate one batch.

        Returns:
            images: uint8 ``(batch, height, width, 3)``.
            word_maps: ``word_maps[i][k]`` uint8 ``(height, width)``, heatmap of the k-th occurrence of a class
                word in prompt i, min-max normalised to ``[0, 255]``. Each occurrence has its own map: in "a red
                circle and a yellow circle" the two "circle" tokens attend to their own objects, which is
                how two instances of one class are told apart.
            found: ``found[i][k]``: the index into ``items[i].class_words`` of occurrence k's word (a word
                without tokens, cut from a long prompt, has none).
            ranges: ``ranges[i][j]``: ``(floor, peak)`` of that map in units of attention (what 0 and 255
                stand for), which the label score reads.
        """
        cfg = self.cfg
        family = family_of(pipe)
        limit = family.max_batch(pipe, task)
        if limit is not None and len(items) > limit:  # the plan's batch, made in calls of `limit` prompts
            parts = [self.run_batch(pipe, collector, task, items[i : i + limit],
                                    None if masks is None else masks[i : i + limit]) for i in range(0, len(items), limit)]
            return (np.concatenate([p[0] for p in parts]), *(sum((p[k] for p in parts), []) for k in (1, 2, 3)))
        with self._phase("pipeline"):
            encoded = family.encode(pipe, [it.prompt for it in items], cfg.task_value(task, "negative_prompt"),
                                    cfg.max_sequence_length)
            for it, e in zip(items, encoded.prompts):
                if e.truncated:
                    limits = " and ".join(f"{n} tokens of {k}" for k, n in encoded.context_limits.items())
                    logger.warning("prompt longer than the model's %s, truncated: %r", limits, it.prompt[:80])
            positions = [[family.word_positions(pipe, e, w) for w, _ in it.class_words]
                         for it, e in zip(items, encoded.prompts)]
            # Each occurrence's positions, as the family groups them (SD3: its CLIP and its T5 tokens together).
            occurrences = [[(j, run) for j, (w, _) in enumerate(it.class_words)
                            for run in family.word_occurrences(pipe, e, w)] for it, e in zip(items, encoded.prompts)]
            found = [[j for j, _ in occ] for occ in occurrences]
            kwargs = task_inputs(cfg, task, items, masks, (self.setting(task, "height"), self.setting(task, "width")))
            height = kwargs.get("height") or kwargs["image"][0].height
            width = kwargs.get("width") or kwargs["image"][0].width
            if "height" not in kwargs and "height" in inspect.signature(pipe.__call__).parameters:
                # SD3's and FLUX's img2img pipelines resize the image to the model's default size unless told
                kwargs.update(height=height, width=width)
            kwargs = family.task_kwargs(pipe, task, kwargs, (height, width))
            collector.reset(len(items), sorted({t for per in positions for p in per for t in p}),
                            family.latent_size(pipe, height, width))
            if collector.method == "concept_attention":
                collector.set_concepts([[self._concept(pipe, family, w) for w, _ in it.class_words] for it in items],
                                       positions)
            out = pipe(
                **encoded.pipeline_kwargs,
                num_inference_steps=self.setting(task, "steps"),
                guidance_scale=self.setting(task, "guidance_scale"),
                # CPU generators: the same latents, hence images, on every device and batch size.
                generator=[torch.Generator("cpu").manual_seed(it.seed) for it in items],
                output_type="np",
                **kwargs,
            )
            images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
            if masks is not None:
                images = keep_outside_mask(images, kwargs["image"], masks)
        word_maps: list[list[np.ndarray]] = [[] for _ in items]
        ranges: list[list[tuple[float, float]]] = [[] for _ in items]
        if collector.active:
            with self._phase("heatmaps"):
                raw = collector.word_heatmaps([[run for _, run in occ] for occ in occurrences], (height, width),
                                              normalize=False)
                for i, row in enumerate(raw):
                    for m in row:
                        lo, hi = m.min(), m.max()
                        norm = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
                        word_maps[i].append((norm.numpy() * 255).round().astype(np.uint8))
                        ranges[i].append((float(lo), float(hi)))
        return images, word_maps, found, ranges

    def media_folder(self, task: str, index: int) -> Path:
        """Where item ``index`` of ``task``'s work list keeps its files: ``<dataset>/<task>/``, or with
        ``images_per_shard`` its numbered shard folder ``<dataset>/<task>/<shard>/``."""
        per = self.cfg.images_per_shard
        parts = (task,) if per is None else (task, f"{index // per:05d}")
        if parts not in self._folders:  # checked once per folder, before any work: a link out of the root is refused
            folder = safe_child(self.media_root, *parts)
            for sub in MEDIA_FOLDERS:
                safe_child(folder, sub)
            self._folders[parts] = folder
        return self._folders[parts]

    def build_sample(self, task: str, item: WorkItem, image: np.ndarray, maps: list[np.ndarray], found: list[int],
                     class_ids: dict[str, int], extra: dict | None = None, folder: Path | None = None,
                     ranges: Sequence[tuple[float, float]] | None = None, attention: str = "cross") -> fo.Sample:
        """Write the item's files (under ``folder``) and return its complete sample (image, heatmaps,
        labels, provenance). ``ranges``: each map's ``(floor, peak)`` in units of attention (:meth:`run_batch`);
        ``attention``: what made the maps (the family's, :attr:`~.family.ModelFamily.attention`), kept with them."""
        cfg = self.cfg
        folder = folder or safe_child(self.media_root, task)
        ext = cfg.image_format
        with self._phase("files"):
            image_path = safe_child(folder, "images", f"{item.key}.{ext}")
            if ext == "png":
                write_png(image_path, image)
            else:
                write_atomic(image_path, lambda tmp: cv2.imwrite(tmp, cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                                                 [cv2.IMWRITE_JPEG_QUALITY, 95]))
            words = [item.class_words[j][0] for j in found]
            classes = [item.class_words[j][1] for j in found]
            word_heatmaps = []
            for j, (word, cls, m) in enumerate(zip(words, classes, maps)):
                path = write_png(safe_child(folder, "heatmaps", f"{item.key}_{j}.png"), m)
                scale = {} if ranges is None else {"floor": ranges[j][0], "peak": ranges[j][1], "attention": attention}
                word_heatmaps.append(fo.Heatmap(map_path=str(path), range=[0, 255], word=word, label=cls, **scale))
            fields: dict = {}
            if maps:
                combined = write_png(safe_child(folder, "heatmaps", f"{item.key}.png"), np.max(np.stack(maps), axis=0))
                fields["heatmap"] = fo.Heatmap(map_path=str(combined), range=[0, 255])
            for cls in dict.fromkeys(classes):  # one field per class, drawn by the App (the list above is not)
                same = [j for j, c in enumerate(classes) if c == cls]
                path = word_heatmaps[same[0]].map_path if len(same) == 1 else str(write_png(
                    safe_child(folder, "heatmaps", f"{item.key}_{class_heatmap_field(cls)}.png"),
                    np.max(np.stack([maps[j] for j in same]), axis=0)))
                fields[class_heatmap_field(cls)] = fo.Heatmap(map_path=path, range=[0, 255])
        with self._phase("labels"):
            # Snapped and grown to the image as stored (a JPEG's decoded pixels), as relabel reads it.
            reread = maps and cfg.labels.reads_image and ext != "png"
            stored = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB) if reread else image
            labels = label_heatmaps(maps, words, classes, class_ids, cfg.labels, ranges, stored, attention)
            fields["missing_words"] = missing_words(labels, [w for w, _ in item.class_words], REVIEW_MIN_SCORE)
            if maps:
                fields.update(to_fiftyone(labels, safe_child(folder, "masks", f"{item.key}.png"), cfg.labels))
        sample = fo.Sample(
            filepath=str(image_path),
            key=item.key,
            task=task,
            prompt=item.prompt,
            negative_prompt=cfg.task_value(task, "negative_prompt"),
            prompt_template=item.template,
            attributes=fo.DynamicEmbeddedDocument(**item.attribute_dict),
            seed=item.seed,
            model=cfg.task_value(task, "model"),
            steps=self.setting(task, "steps"),
            guidance_scale=float(self.setting(task, "guidance_scale")),
            parent_id=item.parent.id if item.parent is not None else None,
            class_words=list(dict.fromkeys(words)),
            word_heatmaps=word_heatmaps,
            metadata=fo.ImageMetadata(width=image.shape[1], height=image.shape[0], num_channels=3,
                                      mime_type=f"image/{'png' if ext == 'png' else 'jpeg'}"),
            **fields,
            **(extra or {}),
        )
        if task != "txt2img":
            sample["strength"] = float(getattr(cfg, task).strength)
        if item.replace is not None:
            sample["inpaint_replaced"] = item.replace[0]
        return sample

    def supervised_labels(self, task: str, items: Sequence[WorkItem], images: np.ndarray,
                          class_ids: dict[str, int], folders: Sequence[Path]) -> list[dict]:
        """YOLO fields for a generated batch (one batched predict), or empty dicts without a label model."""
        yolo = self.yolo()
        if yolo is None:
            return [{} for _ in items]
        with self._phase("labels"):
            return yolo.label([np.ascontiguousarray(im[..., ::-1]) for im in images],
                              [[c for _, c in it.class_words] for it in items], class_ids,
                              [safe_child(folder, "masks_yolo", f"{it.key}.png") for it, folder in zip(items, folders)])

    def run_task(self, task: str, ds: fo.Dataset, progress: ProgressFn | None = None,
                 shard: tuple[int, int] | None = None) -> TaskSummary:
        """Make the missing samples of ``task`` (only those of shard ``(index, count)``, if given).

        The work list is cut into batches once, from the full plan, so an image never depends on
        what already exists or on the shard that makes it: a batch with any missing sample is
        generated whole and only its missing samples are written. (Kernels may round differently
        for another batch composition; with a fixed plan and batch size, images are bit-identical.)
        """
        cfg = self.cfg
        items = list({it.key: it for it in plan(cfg, task, ds)}.values())
        ids = dataset_class_ids(ds)
        masks_by_key: dict[str, np.ndarray] = {}
        if task == "inpaint":
            kept = []
            for it in items:
                m = inpaint_mask(it, ids, cfg.inpaint.mask_dilation)
                if m is None:
                    logger.warning("inpaint: parent %s has no %r mask, skipped", it.parent_key, it.replace[0])
                else:
                    masks_by_key[it.key] = m
                    kept.append(it)
            items = kept
        index = {it.key: i for i, it in enumerate(items)}
        batches = list(_batches(items, cfg.task_value(task, "batch_size")))
        if shard is not None:
            batches = shard_items(batches, *shard)
        have = existing_keys(ds)
        planned = sum(len(b) for b in batches)
        missing = sum(it.key not in have for b in batches for it in b)
        summary = TaskSummary(task, planned=planned, skipped=planned - missing)
        todo = [b for b in batches if any(it.key not in have for it in b)]
        if not todo:
            return summary
        folders_of = {it.key: self.media_folder(task, index[it.key]) for b in todo for it in b}
        pipe = self.pipeline(task)
        bar = tqdm(total=missing, desc=f"{cfg.dataset_name} {task}", unit="img")
        family = family_of(pipe)
        with family.capture(pipe, cfg.heatmap_layers, cfg.self_attention_power,
                            cfg.self_attention_layers, cfg.heatmap_method) as collector, SampleWriter(ds) as writer:
            for batch in todo:
                masks = [masks_by_key[it.key] for it in batch] if task == "inpaint" else None
                folders = [folders_of[it.key] for it in batch]
                images, word_maps, found, ranges = self.run_batch(pipe, collector, task, batch, masks)
                supervised = self.supervised_labels(task, batch, images, ids, folders)
                for it, image, maps, f, r, extra, folder in zip(batch, images, word_maps, found, ranges, supervised,
                                                                folders):
                    if it.key in have:
                        continue
                    summary.unlabeled_words += len(it.class_words) - len(set(f))
                    writer.add(self.build_sample(task, it, image, maps, f, ids, extra, folder, r, family.attention))
                writer.flush()  # each batch, so a killed run loses at most the batch in flight
                summary.made = writer.written
                bar.update(writer.written + writer.duplicates - bar.n)
                report(progress, bar.n, missing, f"{task}: {bar.n}/{missing}")
        summary.skipped += writer.duplicates  # made meanwhile by a concurrent run
        bar.close()
        if self.timings is not None:
            self.timings["insert"] = self.timings.get("insert", 0.0) + writer.flush_seconds
        return summary


def shard_items(items: Sequence, index: int, count: int) -> list:
    """Shard ``index`` of ``count`` of a work list (of items or batches): every ``count``-th one (disjoint, union = all)."""
    if count < 1 or not 0 <= index < count:
        raise DiffuGenError(f"shard {index} of {count}: need count >= 1 and 0 <= index < count")
    return [it for k, it in enumerate(items) if k % count == index]


def generate(cfg: DiffuGenConfig, tasks: Sequence[str] | None = None, output_root: str | Path | None = None,
             progress: ProgressFn | None = None, runner: Runner | None = None,
             shard: tuple[int, int] | None = None) -> GenerateSummary:
    """Run the config's tasks (all of them, in order txt2img → img2img → inpaint, or only ``tasks``).

    Re-running resumes: samples whose key is already in the dataset are skipped; samples whose files
    have gone since are deleted first and made again (:func:`diffugen.store.repair.drop_incomplete`;
    for shards, when they are queued). ``shard=(i, n)`` makes only the i-th of n disjoint parts
    (every n-th batch) of each task's work list.
    """
    chosen = list(tasks) if tasks else cfg.tasks()
    for t in chosen:
        if t not in cfg.tasks():
            raise DiffuGenError(f"--task {t}: the config has no {t!r} section (it has {cfg.tasks()})")
    for warning in plan_warnings(cfg):
        logger.warning("%s", warning)
    run = runner or Runner(cfg, output_root)
    for t in chosen:  # load every model (and embedding) first: a missing one fails before anything is written
        run.pipeline(t)
    run.yolo()
    created = not fo.dataset_exists(cfg.dataset_name)
    with run._phase("open_dataset"):
        ds = open_dataset(cfg.dataset_name, cfg.dataset_classes(), cfg.model_dump(mode="json", by_alias=False))
    try:
        remove_stale_temporaries(run.media_root)
        if shard is None:
            # Sharded runs repair once, when queued (shards.queue_shards / resume_shards), not in every
            # worker: a worker deleting a parent while another makes its children would orphan them.
            drop_incomplete(ds)
        summary = GenerateSummary(cfg.dataset_name)
        for task in chosen:
            summary.tasks.append(run.run_task(task, ds, progress, shard))
    except BaseException:
        if created and len(ds) == 0:  # failed before its first sample: leave no empty dataset behind
            ds.delete()
        raise
    return summary
