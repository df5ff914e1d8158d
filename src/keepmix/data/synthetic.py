"""SalientShapes: the embedded default data set, generated in memory with torch alone.

Each image shows one small binary glyph (the **object**) at a uniformly random position on a
cluttered, textured background. The glyph's *shape* is the label; nothing else is:

* one glyph template per class, an ``object_size``×``object_size`` binary pattern drawn from a
  seeded generator (``template_seed``, shared by every split, so train and test show the same
  classes). Templates are built from random ⌈s/2⌉-cell patterns scaled ×2 (strokes about two
  pixels wide), touch all four sides of their square (the box is tight), and differ from every
  other template *and from its mirror image* in at least ``⌈s²/4⌉`` pixels under any shift of
  up to one pixel: horizontal-flip augmentation stays label-preserving and no class is a
  near-shift of another;
* the glyph colour is random per image: dark (every channel in [0, 0.2]) on a bright local
  background, bright ([0.8, 1]) on a dark one, so colour and brightness carry no label;
* the background is a smooth random colour field (a 4×4 grid per channel, bilinearly upsampled,
  values in [0.3, 0.7]) plus luminance texture noise, plus distractor strokes (line segments)
  and blobs (Gaussian spots) in the same dark/bright colours as objects. Their number and the
  texture amplitude grow with ``clutter`` ∈ [0, 1]; they are kept one pixel away from the
  object's box, so they never change the glyph.

Design goal: a large random cut often erases the object (the label becomes noise) while a
saliency-guided cut that avoids it keeps it. With the default 8×8 glyph on 32×32 images, a
Cutout of side 16 (centre uniform over the image) removes more than half of the glyph's box in
about 20 % of images and all of it in about 8 %; side 20 raises this to about 30 % and 16 %.
``masks`` and ``boxes`` say exactly where the object is, to measure how much of it an
augmentation removed (:meth:`SalientShapes.object_fraction_kept`).

Normalisation: :data:`SALIENT_SHAPES_MEAN` = 0.5 and :data:`SALIENT_SHAPES_STD` = 0.135 per
channel, measured on the default settings (clutter 0.5) and fixed, so train and test are
normalised alike; other settings shift the spread a little (clutter 0 gives a smaller one).

Generation is vectorised over images (loops only over template candidates, the few
distractors and fixed chunks of 512 images); 10 000 images take about a second on one CPU core.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .._checks import check_size

SALIENT_SHAPES_MEAN = (0.5, 0.5, 0.5)
SALIENT_SHAPES_STD = (0.135, 0.135, 0.135)

_MAX_TEMPLATE_TRIES = 20480  # glyph candidates drawn at most
_TEMPLATE_BATCH = 1024
_CHUNK = 512  # images rendered at once


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _shifted(template: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``template`` moved by (dy, dx) inside its own frame, zeros shifted in."""
    s = template.shape[-1]
    out = torch.zeros_like(template)
    out[max(dy, 0):s + min(dy, 0), max(dx, 0):s + min(dx, 0)] = \
        template[max(-dy, 0):s + min(-dy, 0), max(-dx, 0):s + min(-dx, 0)]
    return out


def template_distance(first: torch.Tensor, second: torch.Tensor) -> int:
    """Fewest differing pixels between ``first`` and ``second`` shifted by up to one pixel (either axis)."""
    return min(int((first != _shifted(second, dy, dx)).sum())
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _shift_variants(patterns: torch.Tensor) -> torch.Tensor:
    """The 18 variants a glyph is compared with: it and its mirror image, each shifted by every
    (dy, dx) in {-1, 0, 1}² (zeros shifted in). ``patterns`` B×s×s → B×18×s×s, in the order
    (original, mirror) × dy × dx, variant ``[dy, dx]`` being ``_shifted(pattern, dy, dx)``."""
    size = patterns.shape[-1]
    both = torch.stack([patterns, patterns.flip(-1)], dim=1)  # B×2×s×s
    padded = torch.nn.functional.pad(both, (1, 1, 1, 1))  # out[y, x] = padded[y - dy + 1, x - dx + 1]
    shifted = [padded[..., 1 - dy:1 - dy + size, 1 - dx:1 - dx + size] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return torch.stack(shifted, dim=2).flatten(1, 2)


def _hamming(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Differing pixels between every row of ``first`` (A×P) and of ``second`` (B×P), 0/1 floats: A×B."""
    return first.sum(1, keepdim=True) + second.sum(1).unsqueeze(0) - 2.0 * first @ second.t()


def make_templates(num_classes: int = 10, object_size: int = 8, seed: int = 0) -> torch.Tensor:
    """Class glyphs K×s×s (bool), built as described in the module docstring.

    Candidates are drawn in batches from a generator seeded with ``seed`` and accepted greedily
    in draw order: a candidate needs a fill in [0.35, 0.65], ink on all four sides, and at least
    ``⌈s²/4⌉`` differing pixels from every :func:`_shift_variants` of each glyph accepted so far,
    and each of its own variants as far from each accepted glyph (so the guarantee holds for
    every ordered pair: ``template_distance(T_i, v(T_j)) ≥ ⌈s²/4⌉`` for v = identity or mirror).
    Raises ``ValueError`` when ``num_classes`` such glyphs are not found among
    ``_MAX_TEMPLATE_TRIES`` candidates (too many classes for a small glyph).
    """
    num_classes = _check_int(num_classes, "num_classes", 2)
    size = _check_int(object_size, "object_size", 4)
    cells = math.ceil(size / 2)
    generator = torch.Generator().manual_seed(int(seed))
    scale_index = torch.arange(size) * cells // size  # pixel -> cell (nearest-neighbour ×2 scaling)
    min_distance = math.ceil(size * size / 4)
    accepted: List[torch.Tensor] = []
    accepted_flat = torch.zeros((0, size * size))  # accepted glyphs as flattened 0/1 rows
    variants = torch.zeros((0, size * size))       # and all their shifted / mirrored variants
    for _ in range(0, _MAX_TEMPLATE_TRIES, _TEMPLATE_BATCH):
        cell_patterns = torch.rand((_TEMPLATE_BATCH, cells, cells), generator=generator) < 0.5
        candidates = cell_patterns[:, scale_index][:, :, scale_index]
        fill = candidates.float().mean((1, 2))
        touches_sides = (candidates[:, 0].any(1) & candidates[:, -1].any(1)
                         & candidates[:, :, 0].any(1) & candidates[:, :, -1].any(1))
        candidates = candidates[(fill >= 0.35) & (fill <= 0.65) & touches_sides]
        count = candidates.shape[0]
        flat = candidates.flatten(1).float()
        flat_variants = _shift_variants(candidates).reshape(count * 18, size * size).float()
        # the distance is checked both ways: candidate vs the accepted glyphs' variants, and the
        # candidate's variants vs the accepted glyphs
        nearest = torch.full((count,), math.inf)
        if accepted:
            nearest = torch.minimum(_hamming(flat, variants).amin(1),
                                    _hamming(flat_variants, accepted_flat).view(count, -1).amin(1))
        position = 0
        while True:
            passing = torch.nonzero(nearest[position:] >= min_distance).flatten()
            if passing.numel() == 0:
                break
            first = position + int(passing[0])
            glyph = candidates[first]
            accepted.append(glyph)
            if len(accepted) == num_classes:
                return torch.stack(accepted)
            glyph_flat = glyph.flatten().float().unsqueeze(0)
            glyph_variants = flat_variants[first * 18:(first + 1) * 18]
            nearest = torch.minimum(nearest, torch.minimum(
                _hamming(flat, glyph_variants).amin(1), _hamming(flat_variants, glyph_flat).view(count, 18).amin(1)))
            variants = torch.cat([variants, glyph_variants])
            accepted_flat = torch.cat([accepted_flat, glyph_flat])
            position = first + 1
    raise ValueError(f"could not build {num_classes} distinct glyphs of size {size}: "
                     f"increase object_size or reduce num_classes")


@functools.lru_cache(maxsize=16)
def _cached_templates(num_classes: int, object_size: int, seed: int) -> torch.Tensor:
    # train and test sets (and repeated runs) share their glyphs: build them once per process
    return make_templates(num_classes, object_size, seed)


def _interpolation_matrix(out_size: int, in_size: int, align_corners: bool) -> torch.Tensor:
    """out_size×in_size matrix M of 1-d linear interpolation: ``upsampled = M @ values``.

    The same weights as ``F.interpolate(mode="bilinear")`` along one axis, so a separable
    2-d upsampling is ``M_h @ grid @ M_wᵀ`` — two small matrix products instead of a
    per-pixel kernel.
    """
    positions = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        source = positions * ((in_size - 1) / (out_size - 1)) if out_size > 1 else positions * 0
    else:
        source = ((positions + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight = source - lower
    matrix = torch.zeros((out_size, in_size), dtype=torch.float64)
    matrix[torch.arange(out_size), lower] += 1 - weight
    matrix[torch.arange(out_size), upper] += weight
    return matrix.float()


def _upsample(grid: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling of N×C×h×w to N×C×H×W as two matrix products."""
    rows = _interpolation_matrix(height, grid.shape[-2], align_corners)
    cols = _interpolation_matrix(width, grid.shape[-1], align_corners)
    return torch.matmul(torch.matmul(rows, grid), cols.t())


def _stroke_masks(start: torch.Tensor, end: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """N×H×W bool: pixels visited by each image's segment from ``start`` to ``end`` (y, x).

    The segment is sampled at ``max(H, W)`` evenly spaced points rounded to pixels; a segment
    no longer than that many pixels has steps below one pixel per axis, so the trace is an
    8-connected line. Points outside the image are dropped.
    """
    n = start.shape[0]
    steps = max(height, width)
    t = torch.linspace(0.0, 1.0, steps).view(1, -1)
    ys = (start[:, :1] + t * (end[:, :1] - start[:, :1])).round_().long()
    xs = (start[:, 1:] + t * (end[:, 1:] - start[:, 1:])).round_().long()
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    flat = torch.where(inside, ys * width + xs, torch.full_like(ys, height * width))  # outside -> spare slot
    canvas = torch.zeros((n, height * width + 1), dtype=torch.bool)
    canvas.scatter_(1, flat, True)
    return canvas[:, :-1].view(n, height, width)


def _polar_colours(count: int, dark: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N×3 colours, every channel in [0, 0.2] where ``dark`` else in [0.8, 1]."""
    base = torch.rand((count, 3), generator=generator) * 0.2
    return torch.where(dark.view(-1, 1), base, 1.0 - base)


class SalientShapes(Dataset):
    """The synthetic shape-classification set (see the module docstring).

    Args:
        n_per_class: images per class (the set holds ``num_classes · n_per_class``, classes
            balanced, in random order).
        num_classes: number of glyph classes K (≥ 2).
        image_size: int or (h, w); each side must exceed ``object_size``.
        object_size: glyph side s in pixels (≥ 4; 7–9 suits 32×32 images).
        clutter: 0 (plain smooth background) … 1 (strong texture, 6 strokes and 4 blobs).
        seed: drives positions, colours and clutter of this set.
        template_seed: drives the glyphs; keep it equal across splits.

    Attributes:
        images: uint8 N×3×H×W.
        labels: int64 N.
        boxes: int64 N×4, the object box (top, left, bottom, right), rows [top, bottom) and
            cols [left, right); tight: the glyph touches all four sides.
        masks: bool N×H×W, true on the glyph's pixels (all inside the box).
        templates: bool K×s×s, the class glyphs.
        class_names: ``["shape_0", …]``.
    """

    mean = SALIENT_SHAPES_MEAN
    std = SALIENT_SHAPES_STD

    def __init__(self, n_per_class: int = 1000, *, num_classes: int = 10, image_size=32, object_size: int = 8,
                 clutter: float = 0.5, seed: int = 0, template_seed: int = 0):
        self.n_per_class = _check_int(n_per_class, "n_per_class", 1)
        self.num_classes = _check_int(num_classes, "num_classes", 2)
        self.object_size = _check_int(object_size, "object_size", 4)
        height, width = check_size(image_size, "image_size")
        if height <= self.object_size or width <= self.object_size:
            raise ValueError(f"image_size ({height}, {width}) must exceed object_size={self.object_size} on both sides")
        self.image_size: Tuple[int, int] = (height, width)
        if isinstance(clutter, bool) or not isinstance(clutter, numbers.Real) or not 0.0 <= float(clutter) <= 1.0:
            raise ValueError(f"clutter must be a number in [0, 1], got {clutter!r}")
        self.clutter = float(clutter)
        self.seed = _check_int(seed, "seed", 0)
        self.template_seed = _check_int(template_seed, "template_seed", 0)
        self.templates = _cached_templates(self.num_classes, self.object_size, self.template_seed).clone()
        self.class_names = [f"shape_{k}" for k in range(self.num_classes)]
        self.images, self.labels, self.boxes, self.masks = self._generate()

    # ------------------------------------------------------------------ generation
    def _generate(self):
        generator = torch.Generator().manual_seed(self.seed)
        k, s = self.num_classes, self.object_size
        height, width = self.image_size
        n = k * self.n_per_class
        labels = torch.arange(k).repeat_interleave(self.n_per_class)[torch.randperm(n, generator=generator)]
        top = torch.randint(0, height - s + 1, (n,), generator=generator)
        left = torch.randint(0, width - s + 1, (n,), generator=generator)
        boxes = torch.stack([top, left, top + s, left + s], dim=1)
        images = torch.empty((n, 3, height, width), dtype=torch.uint8)
        masks = torch.empty((n, height, width), dtype=torch.bool)
        # Fixed-size chunks keep the work tensors small (cache- and allocator-friendly); the
        # result depends only on the seed, since the chunk size is a constant.
        for begin in range(0, n, _CHUNK):
            stop = min(begin + _CHUNK, n)
            images[begin:stop], masks[begin:stop] = self._render(labels[begin:stop], top[begin:stop],
                                                                 left[begin:stop], generator)
        return images, labels, boxes, masks

    def _render(self, labels: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.object_size
        height, width = self.image_size
        n = labels.shape[0]

        # object mask: the class glyph placed at (top, left), by gathering template pixels
        rows = torch.arange(height).view(1, -1) - top.view(-1, 1)          # N×H: glyph row of each image row
        cols = torch.arange(width).view(1, -1) - left.view(-1, 1)          # N×W
        in_rows, in_cols = (rows >= 0) & (rows < s), (cols >= 0) & (cols < s)
        glyphs = self.templates[labels]                                      # N×s×s
        picked = glyphs.gather(1, rows.clamp(0, s - 1).unsqueeze(2).expand(n, height, s))
        picked = picked.gather(2, cols.clamp(0, s - 1).unsqueeze(1).expand(n, height, width))
        box = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)
        masks = picked & box

        # smooth colour field in [0.3, 0.7] plus luminance texture
        grid = 0.3 + 0.4 * torch.rand((n, 3, 4, 4), generator=generator)
        canvas = _upsample(grid, height, width, align_corners=True)
        texture = _upsample(torch.randn((n, 1, max(height // 4, 1), max(width // 4, 1)), generator=generator),
                            height, width, align_corners=False)
        texture.mul_(0.06 * self.clutter).add_(torch.randn((n, 1, height, width), generator=generator),
                                               alpha=0.04 * self.clutter)
        canvas.add_(texture)

        # the object's colour opposes the brightness of the background under its box
        box_brightness = (canvas.mean(1) * box).sum((1, 2)) / box.sum((1, 2))
        object_colour = _polar_colours(n, box_brightness > 0.5, generator)

        # distractors, kept one pixel clear of the object's box
        rows_near = (rows >= -1) & (rows <= s)
        cols_near = (cols >= -1) & (cols <= s)
        free = (~(rows_near.unsqueeze(2) & cols_near.unsqueeze(1))).float().unsqueeze(1)   # N×1×H×W
        ys = torch.arange(height, dtype=torch.float32).view(1, -1)
        xs = torch.arange(width, dtype=torch.float32).view(1, -1)
        corner = torch.tensor([height - 1.0, width - 1.0])
        for _ in range(round(6 * self.clutter)):
            start = torch.rand((n, 2), generator=generator) * corner
            end = start + (torch.rand((n, 2), generator=generator) - 0.5) * corner
            colour = _polar_colours(n, torch.rand(n, generator=generator) < 0.5, generator)
            alpha = _stroke_masks(start, end, height, width).unsqueeze(1) * free
            canvas.lerp_(colour.view(n, 3, 1, 1).expand_as(canvas), alpha)
        for _ in range(round(4 * self.clutter)):
            centre = torch.rand((n, 2), generator=generator) * corner
            spread = 2.0 * (1.0 + 1.5 * torch.rand((n, 1), generator=generator)) ** 2   # 2σ², σ in [1, 2.5]
            colour = _polar_colours(n, torch.rand(n, generator=generator) < 0.5, generator)
            # a Gaussian spot is separable: exp(-(dy² + dx²)/2σ²) = exp(-dy²/2σ²)·exp(-dx²/2σ²)
            along_y = torch.exp(-(ys - centre[:, :1]) ** 2 / spread)
            along_x = torch.exp(-(xs - centre[:, 1:]) ** 2 / spread)
            alpha = (0.8 * along_y.unsqueeze(2) * along_x.unsqueeze(1)).unsqueeze(1) * free
            canvas.lerp_(colour.view(n, 3, 1, 1).expand_as(canvas), alpha)

        canvas = torch.where(masks.unsqueeze(1), object_colour.view(n, 3, 1, 1), canvas)
        images = canvas.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return images, masks

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def object_fraction_kept(self, keep: torch.Tensor, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Share of each object's pixels still present under a keep mask.

        Args:
            keep: bool/float B×H×W, 1 where an augmentation left the pixel in place.
            indices: which samples (B,) the rows of ``keep`` belong to; default all.

        Returns:
            float32 (B,): ``Σ mask·keep / Σ mask`` per image.
        """
        masks = self.masks if indices is None else self.masks[indices]
        if keep.shape != masks.shape:
            raise ValueError(f"keep must have shape {tuple(masks.shape)}, got {tuple(keep.shape)}")
        masks = masks.to(keep.device).float()
        return (masks * keep.float()).sum((1, 2)) / masks.sum((1, 2)).clamp_min(1.0)
