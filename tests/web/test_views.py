"""Pure page shaping: the site tree, chart options, the audit diff."""

from __future__ import annotations

from types import SimpleNamespace as Row

from ecoplat.web.views import (
    audit_diff,
    build_site_tree,
    country_chart,
    iri_local_name,
    show_value,
    size_class_chart,
)


def test_equipment_sits_under_the_deepest_place_it_has() -> None:
    sites = [Row(id=1, name="Plant", code="P", timezone="Asia/Shanghai")]
    areas = [Row(id=10, site_id=1, name="Electrolysis", code="EL"), Row(id=11, site_id=1, name="Storage", code="ST")]
    lines = [Row(id=20, area_id=10, name="Cell line", code="EL-1")]
    workstations = [Row(id=31, line_id=20, name="Panel B", code="B", position=2),
                    Row(id=30, line_id=20, name="Panel A", code="A", position=1)]
    equipment = [
        Row(id=40, site_id=1, area_id=10, line_id=20, workstation_id=30, name="Sensor", tag="S-1", equipment_type_iri=""),
        Row(id=41, site_id=1, area_id=10, line_id=20, workstation_id=None, name="Electrolyzer", tag="E-101",
            equipment_type_iri="https://ecoplat.dev/kg/chlor-alkali#MembraneElectrolyzer"),
        Row(id=42, site_id=1, area_id=11, line_id=None, workstation_id=None, name="Tank", tag="T-301",
            equipment_type_iri=""),
        Row(id=43, site_id=1, area_id=None, line_id=None, workstation_id=None, name="Skid", tag="U-1",
            equipment_type_iri=""),
        Row(id=44, site_id=99, area_id=None, line_id=None, workstation_id=None, name="Elsewhere", tag="X",
            equipment_type_iri=""),
    ]
    (site,) = build_site_tree(sites, areas, lines, workstations, equipment)
    assert [e.name for e in site.equipment] == ["Skid"]
    electrolysis, storage = site.children
    assert [e.name for e in storage.equipment] == ["Tank"]
    (line,) = electrolysis.children
    assert [e.name for e in line.equipment] == ["Electrolyzer"]
    assert [w.name for w in line.children] == ["Panel A", "Panel B"]  # by position
    assert [e.name for e in line.children[0].equipment] == ["Sensor"]
    assert site.equipment_total == 4  # the one of another site is not counted here
    assert (site.count("area"), site.count("line"), site.count("workstation")) == (2, 1, 2)
    assert electrolysis.equipment_total == 2 and storage.count("line") == 0


def test_size_chart_has_every_class_and_country_chart_sorts_by_count() -> None:
    size = size_class_chart({"small": 2, "large": 1}, str.upper, "Members")
    assert size["xAxis"]["data"] == ["LARGE", "MEDIUM", "SMALL", "MICRO"]
    assert size["series"][0]["data"] == [1, 0, 2, 0]
    pie = country_chart({"VN": 1, "CN": 2, "TH": 1}, lambda c: {"CN": "China"}.get(c, c), "By country")
    assert pie["series"][0]["data"] == [{"name": "China", "value": 2}, {"name": "TH", "value": 1},
                                        {"name": "VN", "value": 1}]


def test_audit_diff_puts_changed_fields_first_and_skips_updated_at() -> None:
    rows = audit_diff({"name": "A", "code": "X", "updated_at": "t1"}, {"name": "B", "code": "X", "updated_at": "t2"})
    assert [(r.key, r.changed) for r in rows] == [("name", True), ("code", False)]
    created = audit_diff(None, {"id": 1, "name": "B"})
    assert all(r.changed and r.before is None for r in created)


def test_values_read_as_json() -> None:
    assert show_value(True) == "true" and show_value(["operator"]) == '["operator"]'
    assert show_value(None) == "—" and show_value("Weifang") == "Weifang" and show_value(3) == "3"
    assert iri_local_name("https://ecoplat.dev/kg/chlor-alkali#LiquidChlorineTank") == "LiquidChlorineTank"
    assert iri_local_name("https://ecoplat.dev/kg/Compressor") == "Compressor"


def test_navigation_shows_permitted_entries_and_marks_the_most_specific_active() -> None:
    from ecoplat.tenancy.auth import Principal
    from ecoplat.tenancy.permissions import permissions_for
    from ecoplat.web import templating
    from ecoplat.web.templating import NavItem, _nav_for

    operator = Principal(user_id=1, enterprise_id=1, roles=frozenset({"operator"}), label="op",
                         permissions=permissions_for(["operator"]))
    extra = [NavItem("/x-alarms", "Alarms", "alarms:read", order=40),
             NavItem("/x-alarms/kpis", "Alarm KPIs", "alarms:read", order=41)]
    templating.NAV.extend(extra)
    try:
        nav = _nav_for(operator, "/x-alarms/kpis")
        paths = [n["path"] for n in nav]
        assert "/users" not in paths and "/audit" not in paths and "/enterprises" not in paths
        assert [n["path"] for n in nav if n["active"]] == ["/x-alarms/kpis"]
        assert [n["path"] for n in _nav_for(operator, "/") if n["active"]] == ["/"]
        assert _nav_for(None, "/") == []
    finally:
        for item in extra:
            templating.NAV.remove(item)
