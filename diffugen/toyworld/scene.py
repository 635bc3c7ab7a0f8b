"""A procedural toy world: flat-colour shapes on lightly textured backgrounds, with captions and exact masks.

Every scene is drawn from a seed (:func:`make_scene`): a background (``road``, ``grass``, ``sand`` or
``water``), a time of day (``day``, ``dusk``, ``night``), and one to three objects, each a ``circle``,
``square`` or ``triangle`` in one of five palette colours (``red``, ``yellow``, ``white``, ``black``,
``purple``; the colours of one scene are distinct). Objects are drawn without anti-aliasing in their
exact palette colour, so each instance mask is exactly the set of pixels of that colour, and objects
never overlap (their boxes are at least :data:`GAP` pixels apart). Squares and triangles are
sometimes hollow. Options draw other worlds (:func:`make_scene`): stretched shapes, more shapes
(:data:`EXTRA_SHAPES`) and round holes, which the textual-inversion proof's fine-tunes learned.

Time of day dims **only the background** (by :data:`TIME_BRIGHTNESS`), so object colours stay exact
and recoverable: every background colour, at every brightness and with its texture, stays more than
:data:`MIN_BACKGROUND_DISTANCE` (sRGB Euclidean) from every palette colour.

:mod:`diffugen.toyworld.truth` reads the truth back from any image by colour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")
# Squares and triangles are sometimes drawn hollow ("a red hollow square": the shape minus the same
# shape at half size, scaled about its centroid), circles never: a hollow circle is a ring.
HOLLOW_SHAPES = ("square", "triangle")
HOLLOW_RATE = 0.3
HOLE = 0.5
# Squares and triangles can be stretched ("a red wide square": twice as wide as tall, the area of
# the unstretched one; "tall": turned upright), circles never: a stretched circle is an oval. Off by
# default (the shipped model's world); ``stretch_rate`` / ``train --stretch-rate`` turn it on.
STRETCHES = ("wide", "tall")
STRETCH_SHAPES = ("square", "triangle")
STRETCH_RATE = 0.0
ASPECT = 2.0  # width / height of a wide object
# Shapes a world may add (``make_scene(shapes=...)``; not in the shipped model's world or vocabulary):
# more shapes to carry the hollow modifier, so that a ring is a combination of parts the model knows
# (the textual-inversion study, ``studies/``).
EXTRA_SHAPES = ("diamond", "house")
ROOF = 0.4  # the share of a house's box its roof takes
# Shapes the model never saw (never in a training scene, their words not in its vocabulary): the
# subjects of the textual-inversion study (``studies/``). A ring is a hollow
# circle and an oval a wide circle, combinations the training never shows.
NOVEL_SHAPES = ("star", "ring", "oval")
# Every kind of object a mask can be judged as (:func:`classify_shape`).
ALL_LABELS = (SHAPES + tuple(f"hollow {s}" for s in HOLLOW_SHAPES)
              + tuple(f"{st} {s}" for s in STRETCH_SHAPES for st in STRETCHES) + NOVEL_SHAPES)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (235, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (140, 40, 170),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "road": (105, 105, 112),
    "grass": (70, 150, 60),
    "sand": (200, 170, 120),
    "water": (40, 100, 185),
}
TIME_BRIGHTNESS: dict[str, float] = {"day": 1.0, "dusk": 0.78, "night": 0.6}
TEXTURE_AMPLITUDE = 8  # ± sRGB levels of the background texture
GAP = 2  # minimum pixels between object boxes
MIN_BACKGROUND_DISTANCE = 60.0  # checked by the tests for every background × time

# Words of the captions; the tokenizer makes each one a single token (checked by the tests: the tiny
# tokenizer writer cannot do that for every set of words, e.g. "placed" splits "purple").
VOCABULARY = sorted(set(
    list(SHAPES) + list(COLORS) + list(BACKGROUNDS) + list(TIME_BRIGHTNESS) + """
    a an the of on in at with and is it there are photo image picture view scene showing lying sitting
    resting floating during by daylight render one hollow wide tall
    """.split()
))


@dataclass
class ToyObject:
    shape: str
    color: str
    mask: np.ndarray  # bool (H, W), exact pixels of the object
    box: tuple[int, int, int, int]  # x, y, w, h in pixels (inclusive-exclusive extents)
    hollow: bool = False
    stretch: str = ""  # "", "wide" or "tall"

    @property
    def kind(self) -> str:
        """``"square"``, ``"hollow square"`` or ``"wide square"``: the words of the caption after the colour."""
        return " ".join(w for w in (self.stretch, "hollow" if self.hollow else "", self.shape) if w)

    @property
    def label(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    caption: str
    attributes: dict[str, str]  # background, time
    objects: list[ToyObject] = field(default_factory=list)


# ---- drawing -------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, name: str, time: str, size: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[name], np.float32)
    # Light texture: smooth low-frequency noise plus a little pixel noise, same for every background kind.
    coarse = rng.uniform(-1, 1, (size // 8 + 1, size // 8 + 1)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    tex = np.clip(0.7 * smooth + 0.3 * fine, -1, 1) * TEXTURE_AMPLITUDE
    img = (base[None, None, :] + tex[..., None]) * TIME_BRIGHTNESS[time]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _polygon(shape: str, x: int, y: int, w: int, h: int) -> np.ndarray | None:
    """Vertices ``(N, 2)`` of a polygonal shape in the box ``[x, x+w) × [y, y+h)`` (``None`` for a circle)."""
    if shape == "square":
        return np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]], np.float64)
    if shape == "triangle":
        return np.array([[x + (w - 1) / 2.0, y], [x, y + h - 1], [x + w - 1, y + h - 1]], np.float64)
    if shape == "diamond":
        cx, cy = x + (w - 1) / 2.0, y + (h - 1) / 2.0
        return np.array([[cx, y], [x + w - 1, cy], [cx, y + h - 1], [x, cy]], np.float64)
    if shape == "house":  # a square body under a triangular roof (the top ROOF of the box)
        cx, eave = x + (w - 1) / 2.0, y + ROOF * (h - 1)
        return np.array([[cx, y], [x + w - 1, eave], [x + w - 1, y + h - 1], [x, y + h - 1], [x, eave]], np.float64)
    if shape == "star":  # five points, fat arms (inner radius 0.5) so it survives 64 px
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
        return np.stack([x + (w - 1) / 2.0 + rad * w / 2.0 * np.cos(ang), y + (h - 1) / 2.0 + rad * h / 2.0 * np.sin(ang)], 1)
    return None


def _shape_mask(shape: str, x: int, y: int, w: int, h: int, size: int, hollow: bool = False,
                round_hole: bool = False) -> np.ndarray:
    """Binary mask of a shape whose box is ``[x, x+w) × [y, y+h)`` (no anti-aliasing; a circle in a
    box that is not square is an ellipse).

    ``hollow``: minus the same shape scaled by :data:`HOLE` about its centroid (a ``"ring"`` is a
    hollow circle); with ``round_hole``, minus a disc instead: centred where the shape is thickest,
    of radius :data:`HOLE` times that thickness (the shape's inscribed circle scaled by ``HOLE``:
    for a circle, exactly a ring).
    """
    if shape == "ring":
        shape, hollow = "circle", True
    if shape == "oval":
        shape = "circle"
    if hollow and round_hole:
        m = _shape_mask(shape, x, y, w, h, size).astype(np.uint8)
        dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        # the centre of the thickest plateau, not its first pixel (an even-sided square has four)
        ys, xs = np.nonzero(dist >= dist.max() - 1e-3)
        cy, cx = ys.mean(), xs.mean()
        yy, xx = np.mgrid[0:size, 0:size]
        m[(xx - cx) ** 2 + (yy - cy) ** 2 <= (HOLE * dist.max()) ** 2] = 0
        return m.astype(bool)
    m = np.zeros((size, size), np.uint8)
    if shape == "circle":
        yy, xx = np.mgrid[0:size, 0:size]
        d2 = ((xx - x - (w - 1) / 2.0) / (w / 2.0)) ** 2 + ((yy - y - (h - 1) / 2.0) / (h / 2.0)) ** 2
        m[d2 <= 1.0] = 1
        if hollow:
            m[d2 <= HOLE**2] = 0
        return m.astype(bool)
    pts = _polygon(shape, x, y, w, h)
    if pts is None:
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES + NOVEL_SHAPES}")
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    if hollow:
        centre = pts.mean(0)
        inner = centre + HOLE * (pts - centre)
        cv2.fillPoly(m, [np.round(inner).astype(np.int32)], 0, lineType=cv2.LINE_8)
    return m.astype(bool)


def _boxes_apart(a, b) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + GAP <= bx or bx + bw + GAP <= ax or ay + ah + GAP <= by or by + bh + GAP <= ay


# ---- captions ------------------------------------------------------------------------------------
_BG_PHRASES = {
    "road": ["on the road", "on a road", "on the road"],
    "grass": ["on grass", "on the grass", "in the grass"],
    "sand": ["on sand", "on the sand", "on sand"],
    "water": ["on water", "in the water", "on the water"],
}
_BG_NOUNS = {"road": ["the road", "a road", "road"], "grass": ["grass", "the grass"], "sand": ["sand", "the sand"],
             "water": ["water", "the water"]}
_TIME_PHRASES = {
    "day": ["during the day", "in daylight", "by day"],
    "dusk": ["at dusk", "at dusk", "during dusk"],
    "night": ["at night", "at night", "during the night"],
}
_PREFIXES = ["", "", "", "a photo of ", "photo of ", "an image of ", "a picture of ", "a render of ",
             "a scene showing ", "a view of "]


def _object_phrase(rng: random.Random, obj: ToyObject) -> str:
    article = "an" if obj.color[0] in "aeiou" else "a"
    return rng.choice([f"{article} {obj.color} {obj.kind}", f"{article} {obj.color} {obj.kind}", f"one {obj.color} {obj.kind}"])


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def make_caption(rng: random.Random, objects: list[ToyObject], background: str, time: str) -> str:
    """A plain-English caption in one of many word orders; colours always come right before their shape."""
    objs = list(objects)
    rng.shuffle(objs)
    things = _join([_object_phrase(rng, o) for o in objs])
    bg = rng.choice(_BG_PHRASES[background])
    bg_noun = rng.choice(_BG_NOUNS[background])
    t = rng.choice(_TIME_PHRASES[time]) if rng.random() < 0.6 else ""
    ts = f" {t}" if t else ""
    verb = "is" if len(objs) == 1 else "are"
    lying = rng.choice(["lying ", "sitting ", "resting ", "floating " if background == "water" else "", ""])
    templates = [
        f"{rng.choice(_PREFIXES)}{things} {bg}{ts}",
        f"{rng.choice(_PREFIXES)}{bg_noun} with {things}{ts}",
        f"there {verb} {things} {lying}{bg}{ts}",
        f"{things} {lying}{bg}{ts}",
        f"{bg_noun}{ts} with {things}",
        f"{t + ', ' if t else ''}{things} {bg}",
        f"{rng.choice(_PREFIXES)}{bg_noun} {ts.strip() + ' ' if t else ''}and {things} on it",
    ]
    text = rng.choice(templates)
    return " ".join(text.split())


# ---- scenes --------------------------------------------------------------------------------------
def make_scene(seed: int, size: int = 64, n_objects: int | None = None, background: str | None = None,
               time: str | None = None, objects: list[tuple] | None = None,
               min_size: int | None = None, max_size: int | None = None, hollow_rate: float = HOLLOW_RATE,
               stretch_rate: float = STRETCH_RATE, shapes: tuple[str, ...] = SHAPES,
               hollow_shapes: tuple[str, ...] = HOLLOW_SHAPES, round_holes: bool = False) -> Scene:
    """Draw one scene, deterministic from ``seed`` (any argument given fixes that part).

    Args:
        size: image side in pixels (square images).
        n_objects: 1 to 3 (random when ``None``).
        objects: ``[(color, shape), ...]`` or ``[(color, shape, hollow[, stretch]), ...]`` to draw instead of
            random ones (distinct colours); random ones of :data:`HOLLOW_SHAPES` are hollow with
            probability ``hollow_rate`` (0: the world before hollow shapes, seed for seed); random
            ones of :data:`STRETCH_SHAPES` that are not hollow are ``"wide"`` or ``"tall"`` with
            probability ``stretch_rate`` (0, the default: the world before stretched shapes). A 4th element
            ``"wide"``/``"tall"`` stretches a given object.
        min_size, max_size: object box side range in pixels (default ``0.22`` to ``0.38`` of ``size``).
        shapes, hollow_shapes: the shapes random objects take, and those of them that can be hollow
            (the defaults: the shipped model's world; e.g. ``SHAPES + EXTRA_SHAPES``).
        round_holes: hollow objects get a round hole (``_shape_mask``'s ``round_hole``: a hollow
            circle would be a ring) instead of their own shape at half size.
    """
    rng = random.Random(seed)
    # Hollowness has its own stream, so adding it left every other draw of a seed as it was.
    hollow_rng = random.Random(f"hollow-{seed}")
    stretch_rng = random.Random(f"stretch-{seed}")
    nrng = np.random.default_rng(seed)
    background = background or rng.choice(list(BACKGROUNDS))
    time = time or rng.choice(list(TIME_BRIGHTNESS))
    if objects is None:
        n = n_objects or rng.choice([1, 2, 2, 3, 3])
        colors = rng.sample(list(COLORS), n)
        objects = [(c, rng.choice(shapes)) for c in colors]
        objects = [(c, sh, sh in hollow_shapes and hollow_rng.random() < hollow_rate) for c, sh in objects]
        # one draw per object from its own stream: stretching leaves every other draw of a seed as it was
        draws = [stretch_rng.random() for _ in objects]
        objects = [(c, sh, h, STRETCHES[int(2 * r / stretch_rate)] if sh in STRETCH_SHAPES and not h and r < stretch_rate else "")
                   for (c, sh, h), r in zip(objects, draws)]
    objects = [(o[0], o[1], o[2] if len(o) > 2 else False, o[3] if len(o) > 3 else "") for o in objects]
    if len({o[0] for o in objects}) != len(objects):
        raise ValueError(f"the colours of one scene must be distinct: {objects}")
    lo = min_size or max(4, round(0.22 * size))
    hi = max_size or max(lo, round(0.38 * size))
    image = _background(nrng, background, time, size)
    placed: list[ToyObject] = []
    for color, shape, hollow, stretch in objects:
        stretch = "wide" if shape == "oval" else stretch
        for attempt in range(200):
            s = rng.randint(lo, hi) if attempt < 100 else lo
            w = h = s
            if stretch:  # the area of the s × s one, ASPECT to one
                w, h = min(size, round(s * ASPECT**0.5)), round(s / ASPECT**0.5)
                w, h = (w, h) if stretch == "wide" else (h, w)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            box = (x, y, w, h)
            if all(_boxes_apart(box, o.box) for o in placed):
                break
        else:  # no room: leave the object out (only with unusual sizes)
            continue
        mask = _shape_mask(shape, x, y, w, h, size, hollow, round_holes)
        image[mask] = COLORS[color]
        placed.append(ToyObject(shape, color, mask, box, hollow, "" if shape == "oval" else stretch))
    caption = make_caption(rng, placed, background, time)
    return Scene(image=image, caption=caption, attributes={"background": background, "time": time}, objects=placed)


def scenes(start_seed: int = 0, count: int | None = None, size: int = 64):
    """Yield scenes for seeds ``start_seed, start_seed + 1, ...`` (forever when ``count`` is ``None``)."""
    seed = start_seed
    while count is None or seed < start_seed + count:
        yield make_scene(seed, size)
        seed += 1
