"""The report's plots as inline SVG (no plotting dependency): accuracy against p50 latency per device,
with the Pareto front, the release highlighted, predicted points hollow and labels that never overlap;
and the size of every artifact."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
WIDTH, HEIGHT, PAD = 640, 360, 56
LABEL_HEIGHT, CHAR_WIDTH = 12, 6.3  # font-size 11 sans-serif: a generous width per character
#: Where a label may go relative to its point (dx, dy of the text's baseline start; anchor), tried in order.
OFFSETS = [(8, -7, "start"), (8, 15, "start"), (-8, -7, "end"), (-8, 15, "end"), (8, -21, "start"),
           (-8, -21, "end"), (8, 29, "start"), (-8, 29, "end")]


@dataclass(frozen=True)
class Point:
    latency_ms: float
    accuracy: float
    name: str
    predicted: bool = False
    release: bool = False


@dataclass(frozen=True)
class Label:
    """A placed label: its text's anchor point and alignment, or a number keyed under the plot."""

    x: float
    y: float
    anchor: str
    text: str

    def box(self) -> tuple[float, float, float, float]:
        width = CHAR_WIDTH * len(self.text)
        left = self.x - width if self.anchor == "end" else self.x
        return left, self.y - LABEL_HEIGHT + 2, left + width, self.y + 3


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: list[tuple[float, float]], texts: list[str], bounds: tuple[float, float, float, float],
                 taken: list[Label] | None = None) -> tuple[list[Label], list[int]]:
    """A label beside each point at the first offset that overlaps no label placed (or ``taken``),
    no point and stays inside ``bounds``; and the indices of the points left without room."""
    placed: list[Label] = []
    crowded: list[int] = []
    dots = [(x - 5, y - 5, x + 5, y + 5) for x, y in anchors]
    for index, ((x, y), text) in enumerate(zip(anchors, texts)):
        for dx, dy, anchor in OFFSETS:
            label = Label(x + dx, y + dy, anchor, text)
            box = label.box()
            inside = bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1] and box[3] <= bounds[3]
            if inside and not any(_overlaps(box, other.box()) for other in [*(taken or []), *placed]) \
                    and not any(_overlaps(box, dot) for dot in dots):
                placed.append(label)
                break
        else:
            crowded.append(index)
    return placed, crowded


def pareto_front(points: list[Point]) -> list[Point]:
    """Points not beaten by another that is both faster and at least as accurate."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front


def _svg(width: float, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12">{"".join(body)}</svg>')


def scatter_svg(points: list[Point], title: str) -> str:
    """Accuracy against p50 latency: the Pareto front dashed in red, the release ringed in gold,
    predicted points hollow; each point labelled beside it or, where there is no room, by a number
    listed under the plot."""
    if not points:
        return f"<p>{html.escape(title)}: no points with a latency and an accuracy.</p>"
    x1 = max(p.latency_ms for p in points) * 1.1 or 1.0
    y0 = min(p.accuracy for p in points) - 0.02
    y1 = min(1.0, max(p.accuracy for p in points) + 0.02)

    def sx(x: float) -> float:
        return PAD + x / x1 * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / (y1 - y0 or 1) * (HEIGHT - 2 * PAD)

    front = pareto_front(points)
    body = [f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
            f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="black"/>',
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="black"/>',
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 14}" text-anchor="middle">p50 latency (ms)</text>',
            f'<text x="14" y="{HEIGHT / 2}" transform="rotate(-90 14 {HEIGHT / 2})" text-anchor="middle">accuracy</text>',
            f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" text-anchor="middle">0</text>',
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{x1:.2f}</text>',
            f'<text x="{PAD - 4}" y="{sy(y1) + 4}" text-anchor="end">{y1:.3f}</text>',
            f'<text x="{PAD - 4}" y="{sy(y0) + 4}" text-anchor="end">{y0:.3f}</text>']
    if len(front) > 1:
        path = " ".join(f"{sx(p.latency_ms):.1f},{sy(p.accuracy):.1f}" for p in front)
        body.append(f'<polyline points="{path}" fill="none" stroke="#c33" stroke-dasharray="4 3"/>')
    order = sorted(range(len(points)), key=lambda i: (not points[i].release, points[i].latency_ms))
    anchors = [(sx(points[i].latency_ms), sy(points[i].accuracy)) for i in order]
    texts = [points[i].name + (" (release)" if points[i].release else "") + (" ~" if points[i].predicted else "")
             for i in order]
    bounds = (PAD + 2, 24, WIDTH - 4, HEIGHT - PAD - 2)
    labels, crowded = place_labels(anchors, texts, bounds)
    # points without room for their name get a number beside them (where one fits) and a line in the key
    numbers, _ = place_labels([anchors[i] for i in crowded], [str(n) for n in range(1, len(crowded) + 1)],
                              bounds, taken=labels)
    for i in order:
        point = points[i]
        colour = "#c33" if point in front else "#369"
        fill = "white" if point.predicted else colour
        cx, cy = sx(point.latency_ms), sy(point.accuracy)
        if point.release:
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="#e0a800" stroke-width="3"/>')
        body.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{colour}" '
                    f'stroke-width="2"><title>{html.escape(point.name)}: {point.latency_ms:.3f} ms, '
                    f'{100 * point.accuracy:.2f}%{" (predicted)" if point.predicted else ""}</title></circle>')
    for label in labels:
        weight = ' font-weight="bold"' if label.text.endswith(("(release)", "(release) ~")) else ""
        body.append(f'<text class="label" x="{label.x:.1f}" y="{label.y:.1f}" text-anchor="{label.anchor}" '
                    f'font-size="11"{weight}>{html.escape(label.text)}</text>')
    for label in numbers:
        body.append(f'<text class="label" x="{label.x:.1f}" y="{label.y:.1f}" text-anchor="{label.anchor}" '
                    f'font-size="10">{label.text}</text>')
    shown = {label.text for label in numbers}
    key = [f"{number}: {texts[index]}" + ("" if str(number) in shown else
                                          f" ({points[order[index]].latency_ms:.2f} ms, "
                                          f"{100 * points[order[index]].accuracy:.2f}%)")
           for number, index in enumerate(crowded, 1)]
    for row, line in enumerate(key):
        body.append(f'<text class="key" x="{PAD}" y="{HEIGHT + 6 + 16 * row}" font-size="11">{html.escape(line)}</text>')
    note_y = HEIGHT + 6 + 16 * len(key)
    body.append(f'<text x="{PAD}" y="{note_y}" font-size="10" fill="#555">red: Pareto front; gold ring: release; '
                'hollow and ~: predicted latency (not measured)</text>')
    return _svg(WIDTH, note_y + 8, body)


def size_svg(report: dict[str, Any]) -> str:
    """One bar per artifact: the bytes a device must hold."""
    records = report["artifacts"]
    bar, left = 22, 170
    biggest = max(r["size_bytes"] for r in records) or 1
    body = [f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">size per artifact (MiB)</text>']
    for i, record in enumerate(records):
        y = 26 + i * bar
        length = (WIDTH - left - 60) * record["size_bytes"] / biggest
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(record["name"])}</text>')
        body.append(f'<rect x="{left}" y="{y + 2}" width="{length:.1f}" height="{bar - 6}" fill="#369"/>')
        body.append(f'<text x="{left + length + 4:.1f}" y="{y + 14}">{record["size_bytes"] / MIB:.2f}</text>')
    return _svg(WIDTH, 30 + bar * len(records), body)
