"""Pure shaping of data for pages (no I/O): the ISA-95 site tree with counts, ECharts options
for the ecosystem overview, and the before/after diff of an audit event."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SIZE_CLASSES = ("large", "medium", "small", "micro")


@dataclass
class TreeNode:
    """One node of the plant hierarchy. kind: site, area, line, workstation, equipment."""

    kind: str
    id: int
    name: str
    code: str = ""
    children: list[TreeNode] = field(default_factory=list)
    equipment: list[TreeNode] = field(default_factory=list)
    detail: str = ""  # equipment: its type IRI
    timezone: str = ""

    @property
    def equipment_total(self) -> int:
        """Equipment here and anywhere below."""
        return len(self.equipment) + sum(c.equipment_total for c in self.children)

    def count(self, kind: str) -> int:
        """How many descendants of a kind (areas of a site, workstations of an area…)."""
        return sum((1 if c.kind == kind else 0) + c.count(kind) for c in self.children)


def build_site_tree(sites: Sequence[Any], areas: Sequence[Any], lines: Sequence[Any],
                    workstations: Sequence[Any], equipment: Sequence[Any]) -> list[TreeNode]:
    """site → area → line → workstation, each piece of equipment under the deepest place it sits
    (workstation, else line, else area, else site). Rows need the ISA-95 parent ids."""
    site_nodes = {s.id: TreeNode("site", s.id, s.name, s.code, timezone=getattr(s, "timezone", "")) for s in sites}
    area_nodes: dict[int, TreeNode] = {}
    for a in sorted(areas, key=lambda r: r.id):
        node = TreeNode("area", a.id, a.name, a.code)
        area_nodes[a.id] = node
        if a.site_id in site_nodes:
            site_nodes[a.site_id].children.append(node)
    line_nodes: dict[int, TreeNode] = {}
    for ln in sorted(lines, key=lambda r: r.id):
        node = TreeNode("line", ln.id, ln.name, ln.code)
        line_nodes[ln.id] = node
        if ln.area_id in area_nodes:
            area_nodes[ln.area_id].children.append(node)
    ws_nodes: dict[int, TreeNode] = {}
    for w in sorted(workstations, key=lambda r: (getattr(r, "position", 0), r.code or "", r.id)):
        node = TreeNode("workstation", w.id, w.name, w.code)
        ws_nodes[w.id] = node
        if w.line_id in line_nodes:
            line_nodes[w.line_id].children.append(node)
    for e in sorted(equipment, key=lambda r: (r.tag or "", r.id)):
        node = TreeNode("equipment", e.id, e.name, e.tag, detail=e.equipment_type_iri or "")
        parent = (ws_nodes.get(e.workstation_id) if e.workstation_id else None) \
            or (line_nodes.get(e.line_id) if e.line_id else None) \
            or (area_nodes.get(e.area_id) if e.area_id else None) \
            or site_nodes.get(e.site_id)
        if parent is not None:
            parent.equipment.append(node)
    return sorted(site_nodes.values(), key=lambda n: (n.name, n.id))


def iri_local_name(iri: str) -> str:
    """'https://ecoplat.dev/kg/chlor-alkali#MembraneElectrolyzer' → 'MembraneElectrolyzer'."""
    for sep in ("#", "/"):
        if sep in iri:
            tail = iri.rsplit(sep, 1)[1]
            if tail:
                return tail
    return iri


def size_class_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """All four size classes in order, zeros included."""
    return [(s, int(counts.get(s, 0))) for s in SIZE_CLASSES]


def country_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Countries by number of members, most first (ties by code)."""
    return sorted(((c, int(n)) for c, n in counts.items()), key=lambda kv: (-kv[1], kv[0]))


def size_class_chart(counts: Mapping[str, int], label: Callable[[str], str], title: str) -> dict[str, Any]:
    """ECharts bar chart option: members per size class (all four classes, zeros included)."""
    data = size_class_counts(counts)
    return {
        "title": {"text": title, "left": "center", "textStyle": {"fontSize": 14}},
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 40, "right": 20, "bottom": 30, "top": 40},
        "xAxis": {"type": "category", "data": [label(s) for s, _ in data]},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [{"type": "bar", "data": [n for _, n in data], "barMaxWidth": 48}],
    }


def country_chart(counts: Mapping[str, int], label: Callable[[str], str], title: str) -> dict[str, Any]:
    """ECharts pie chart option: members per country."""
    return {
        "title": {"text": title, "left": "center", "textStyle": {"fontSize": 14}},
        "tooltip": {"trigger": "item", "formatter": "{b}: {c} ({d}%)"},
        "series": [{"type": "pie", "radius": ["35%", "65%"], "top": 30,
                    "data": [{"name": label(c), "value": n} for c, n in country_counts(counts)]}],
    }


@dataclass(frozen=True)
class DiffRow:
    key: str
    before: Any
    after: Any
    changed: bool


def audit_diff(before: dict[str, Any] | None, after: dict[str, Any] | None,
               *, ignore: Iterable[str] = ("updated_at",)) -> list[DiffRow]:
    """Rows of an audit event's before/after, changed keys first; an update's unchanged keys are
    kept (marked) so the reader sees the whole object."""
    before, after = before or {}, after or {}
    skip = set(ignore)
    keys = [k for k in dict.fromkeys([*before, *after]) if k not in skip]
    rows = [DiffRow(k, before.get(k), after.get(k), before.get(k) != after.get(k)) for k in keys]
    if before and after:
        rows.sort(key=lambda r: not r.changed)
    return rows


def show_value(value: Any) -> str:
    """An audit value as the API spells it (JSON: true, null, ["operator"]), so the log reads the same
    as /api/audit-events."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
