"""Procedural product photos: a category's silhouette, filled with a colour and a pattern,
shaped by a style, on a random background, under random pose, scale and lighting.

Every shape is a list of polygons in unit coordinates ([0, 1]², y down), so pose and style are
plain affine maps of the points. Rendering is done at ``RENDER`` px and downsampled, which
anti-aliases the edges.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RENDER = 128  # px, square canvas before resizing to the requested size

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (35, 80, 200),
    "green": (40, 150, 60),
    "yellow": (235, 200, 40),
    "black": (25, 25, 28),
    "white": (240, 240, 236),
    "pink": (240, 130, 180),
    "orange": (240, 120, 20),
    "purple": (120, 50, 160),
    "brown": (120, 75, 40),
}
PATTERNS = ("solid", "stripes", "dots", "check", "gradient")
STYLES = ("classic", "slim", "two-tone")


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# category → polygons (unit square). Twelve-plus silhouettes that differ in outline and topology.
SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "t-shirt": [[(0.3, 0.15), (0.42, 0.2), (0.58, 0.2), (0.7, 0.15), (0.92, 0.32), (0.82, 0.45), (0.74, 0.4),
                 (0.74, 0.88), (0.26, 0.88), (0.26, 0.4), (0.18, 0.45), (0.08, 0.32)]],
    "dress": [[(0.4, 0.08), (0.6, 0.08), (0.62, 0.35), (0.85, 0.92), (0.15, 0.92), (0.38, 0.35)]],
    "trousers": [[(0.28, 0.08), (0.72, 0.08), (0.78, 0.92), (0.58, 0.92), (0.5, 0.38), (0.42, 0.92),
                  (0.22, 0.92)]],
    "sneaker": [[(0.08, 0.72), (0.1, 0.5), (0.3, 0.42), (0.45, 0.3), (0.6, 0.32), (0.7, 0.5), (0.92, 0.6),
                 (0.94, 0.78), (0.08, 0.78)]],
    "handbag": [_rect(0.18, 0.42, 0.82, 0.85), _ellipse(0.5, 0.42, 0.2, 0.2)[14:] + _ellipse(0.5, 0.42, 0.14, 0.14)[14:][::-1]],
    "backpack": [[(0.3, 0.2), (0.7, 0.2), (0.78, 0.3), (0.8, 0.88), (0.2, 0.88), (0.22, 0.3)], _rect(0.32, 0.6, 0.68, 0.8)],
    "cap": [_ellipse(0.45, 0.55, 0.3, 0.25)[14:] + [(0.75, 0.55), (0.95, 0.6), (0.75, 0.62), (0.15, 0.6)]],
    "watch": [_rect(0.42, 0.05, 0.58, 0.95), _ellipse(0.5, 0.5, 0.2, 0.2)],
    "mug": [_rect(0.22, 0.25, 0.68, 0.85), _ellipse(0.72, 0.52, 0.16, 0.18)],
    "lamp": [[(0.35, 0.12), (0.65, 0.12), (0.8, 0.42), (0.2, 0.42)], _rect(0.47, 0.42, 0.53, 0.82),
             _rect(0.3, 0.82, 0.7, 0.9)],
    "chair": [_rect(0.28, 0.1, 0.36, 0.9), _rect(0.28, 0.5, 0.75, 0.58), _rect(0.68, 0.5, 0.75, 0.9)],
    "bottle": [_rect(0.44, 0.08, 0.56, 0.28), [(0.44, 0.28), (0.56, 0.28), (0.68, 0.4), (0.68, 0.92), (0.32, 0.92),
                                               (0.32, 0.4)]],
    "vase": [_ellipse(0.5, 0.6, 0.28, 0.3)[20:] + _ellipse(0.5, 0.6, 0.28, 0.3)[:9] + [(0.6, 0.2), (0.4, 0.2)]],
    "sunglasses": [_ellipse(0.3, 0.5, 0.17, 0.12), _ellipse(0.7, 0.5, 0.17, 0.12), _rect(0.45, 0.46, 0.55, 0.5)],
}
CATEGORIES = tuple(SHAPES)


def _style_transform(points: np.ndarray, style: str) -> np.ndarray:
    if style == "slim":  # narrower, taller
        return np.column_stack([0.5 + (points[:, 0] - 0.5) * 0.72, 0.5 + (points[:, 1] - 0.5) * 1.08])
    return points


def _pattern(rng: np.random.Generator, pattern: str, colour: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) float RGB fill: the base colour with a pattern in a lighter or darker shade."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = colour * 0.45 if colour.mean() > 110 else np.minimum(colour + 150, 255)
    base = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    freq = rng.uniform(9, 14)
    if pattern == "stripes":
        mask = (np.sin(u * freq * 2 * math.pi) > 0.2)[..., None]
    elif pattern == "dots":
        gx, gy = (xx * freq) % 1.0 - 0.5, (yy * freq) % 1.0 - 0.5
        mask = ((gx ** 2 + gy ** 2) < 0.07)[..., None]
    elif pattern == "check":
        mask = (((xx * freq).astype(int) + (yy * freq).astype(int)) % 2 == 0)[..., None]
    elif pattern == "gradient":
        t = np.clip(u, 0, 1)[..., None]
        return base * (1 - t) + shade * t
    else:
        return base
    return np.where(mask, shade, base)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.choice(["plain", "plain", "gradient", "texture"])
    tone = rng.uniform(150, 250, size=3) if rng.random() < 0.8 else rng.uniform(40, 250, size=3)
    if kind == "plain":
        return np.broadcast_to(tone, (size, size, 3)).astype(np.float32).copy()
    yy = np.mgrid[0:size, 0:size][0].astype(np.float32)[..., None] / size
    if kind == "gradient":
        other = rng.uniform(120, 255, size=3)
        return tone * (1 - yy) + other * yy
    noise = rng.normal(0, 1, size=(size // 8, size // 8, 1)).repeat(8, 0).repeat(8, 1)
    return np.clip(tone + noise * 18, 0, 255).astype(np.float32)


def render_product(rng: np.random.Generator, *, category: str, colour: str, pattern: str, style: str,
                   size: int = 128, watermark: str | None = None) -> Image.Image:
    """One RGB product photo of ``size`` px."""
    canvas = RENDER
    bg = _background(rng, canvas)
    fill = _pattern(rng, pattern, np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, 3), canvas)
    if style == "two-tone":  # a contrasting band across the lower third of the product
        band = np.zeros((canvas, canvas, 1), dtype=bool)
        band[int(canvas * 0.62):int(canvas * 0.74)] = True
        fill = np.where(band, 255 - fill * 0.8, fill)

    # Pose: rotation, scale and offset of the whole silhouette.
    theta = math.radians(rng.uniform(-18, 18))
    scale = rng.uniform(0.7, 1.0)
    offset = rng.uniform(-0.08, 0.08, size=2)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    mask_img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask_img)
    for poly in SHAPES[category]:
        pts = _style_transform(np.asarray(poly, dtype=np.float64), style)
        pts = ((pts - 0.5) @ rot.T) * scale + 0.5 + offset
        draw.polygon([tuple(p) for p in (pts * canvas)], fill=255)
    mask = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)[..., None] / 255.0

    # A soft drop shadow grounds the product; lighting is a global gain and a linear falloff.
    shadow = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(6)), dtype=np.float32)[..., None] / 255.0
    bg = bg * (1 - 0.25 * np.roll(shadow, (4, 4), axis=(0, 1)))
    img = bg * (1 - mask) + fill * mask
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    light = rng.uniform(0.8, 1.15) * (1 + rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5))
    img = np.clip(img * light[..., None] + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)

    out = Image.fromarray(img, "RGB").resize((size, size), Image.Resampling.LANCZOS)
    if watermark:
        ImageDraw.Draw(out).text((rng.integers(2, size // 3), rng.integers(size // 2, size - 14)), watermark,
                                 fill=(255, 255, 255))
    return out


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=88)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=85)
    else:
        img.save(buf, fmt)
    return buf.getvalue()
