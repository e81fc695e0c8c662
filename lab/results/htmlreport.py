"""report.html: one self-contained page (no external assets) for a run.

The tests x cells matrix comes first, rows whose result or per-test diagnostics differ
between cells highlighted, and results whose kernel lines deserve a look (splats,
warnings, IOMMU faults, driver errors; records.notable) marked; below it, per test and
cell, the diagnostics, those kernel alarms, the routine driver lines on demand, the
dmesg slice and the console excerpt the triage attributed to it. Each cell's slowest
tests come before the matrix, with their wall times.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from lab.results import parity
from lab.results.history import CellTrend, svg
from lab.results.records import TestRecord, printable, slowest
from lab.results.rundir import MISSING_WHY, CellData, Row, RunData, cell_facts, matrix

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.5em 0 .4em}
h3{font-size:1em;margin:1.2em 0 .3em;font-family:monospace}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}
#matrix td.test{font-family:monospace;white-space:nowrap}
tr.differs td.test{border-left:4px solid #e0a000}tr.differs{background:#fff7df}
.o{font-weight:600;padding:0 4px;border-radius:3px;white-space:nowrap}
.o-pass{color:#176317}.o-skip{color:#666}.o-xfail{color:#6a4c93}
.o-fail,.o-xpass{color:#fff;background:#c0392b}.o-error,.o-notrun{color:#fff;background:#7b1fa2}
.r-fail,.r-xpass{background:#fdecea}.r-error,.r-notrun{background:#f3e5f5}
.r-absent{color:#aaa}.diag{font:12px monospace;color:#8a5a00}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:4px;overflow-x:auto;font-size:12px;margin:2px 0}
pre.alarm{background:#fdecea;border-color:#f5c6cb}
details{margin:2px 0 6px 1em}summary{cursor:pointer}
.controls{margin:.6em 0}.controls label{margin-right:1.2em}.muted{color:#777}
"""

JS = """
const q = (s) => document.querySelector(s);
const rows = [...document.querySelectorAll('#matrix tbody tr')];
function apply() {
  const d = q('#only-diff').checked, u = q('#only-unexpected').checked;
  const f = q('#filter').value.toLowerCase();
  let shown = 0;
  for (const r of rows) {
    const show = (!d || r.classList.contains('differs')) &&
      (!u || r.classList.contains('unexpected')) &&
      (!f || r.dataset.test.toLowerCase().includes(f));
    r.hidden = !show;
    shown += show;
  }
  q('#shown').textContent = shown;
}
for (const id of ['#only-diff', '#only-unexpected', '#filter']) q(id).addEventListener('input', apply);
window.addEventListener('load', () => {
  // report.html#differing or #unexpected: open the page filtered.
  q('#only-diff').checked ||= location.hash === '#differing';
  q('#only-unexpected').checked ||= location.hash === '#unexpected';
  apply();
  // For tests that load the page in a real browser: what was laid out, not just parsed.
  document.body.dataset.rendered = rows.length;
  document.body.dataset.matrixHeight = Math.round(q('#matrix').getBoundingClientRect().height);
});
"""


def render(run: RunData, trends: list[CellTrend] | None = None) -> str:
    rows = matrix(run)
    s = run.summary
    title = f"vfio-lab: {s.get('scenario', '?')} {s.get('run_id', '')}"
    differing = sum(r.differs for r in rows)
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class=muted>accelerator {escape(str(s.get('accelerator')))} "
        f"({escape(str(s.get('accelerator_reason')))}); exit code {escape(str(s.get('exit_code')))}"
        + ("; <b>interrupted</b>" if s.get("interrupted") else "")
        + (f"; {_badge('fail', f'cells missing: {len(run.missing)}')}" if run.missing else "")
        + "</p>",
        "<h2>Cells</h2>",
        _cells_table(run),
        _parity_section(run),
        _trend_section(trends or []),
        _slowest_section(run, rows),
        f"<h2>Tests &times; cells</h2><p>{len(rows)} tests, {differing} differ between cells.</p>",
        _controls(),
        _matrix_table(run, rows),
        "<h2>Details</h2>",
        *(_details(i, row, run) for i, row in enumerate(rows)),
    ]
    return printable(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def _trend_section(trends: list[CellTrend]) -> str:
    """Each cell's pass rate over the nights in the history (`--history`)."""
    if not trends:
        return ""
    rows = [
        f"<tr><td>{escape(t.cell)}</td><td>{svg(t)}</td><td>{t.points[-1][1]:.0%}</td>"
        f"<td>{len(t.points)}</td></tr>"
        for t in trends
        if t.points
    ]
    head = "<tr><th>cell</th><th>pass rate</th><th>last</th><th>nights</th></tr>"
    return f"<h2 id=trend>Trend</h2><table>{head}{''.join(rows)}</table>"


def _slowest_section(run: RunData, rows: list[Row]) -> str:
    """Each cell's slowest tests, linked to their details; a cell whose records carry no
    durations (a run from before they were kept) says so."""
    if not run.cells:
        return ""
    anchor = {row.test: i for i, row in enumerate(rows)}
    out = []
    for cell in run.cells:
        top = slowest(cell.records)
        name = f"<td rowspan={max(1, len(top))}>{escape(cell.name)}"
        if not top:
            out.append(f"<tr>{name}<td colspan=3 class=muted>no test durations recorded</tr>")
        for i, rec in enumerate(top):
            out.append(
                f"<tr>{name if i == 0 else ''}<td class=test><a href='#t{anchor[rec.name]}'>"
                f"{escape(rec.name)}</a><td>{rec.duration_s:.2f} s<td>{_badge(rec.outcome)}</tr>"
            )
    head = "<tr><th>cell<th>test<th>wall<th>result</tr>"
    return f"<h2 id=slowest>Slowest tests</h2><table id=slowest-tests>{head}{''.join(out)}</table>"


def _parity_section(run: RunData) -> str:
    """The lab's payload against the C suites, per cell (nothing when no cell ran both): the
    numbers, the pairs of outcomes, the disagreements."""
    cells = parity.run_parity(run)
    if not cells:
        return ""
    rows = []
    for p in cells:
        explained = len(p.disagree) - len(p.unexplained)
        rows.append(
            f"<tr><td>{escape(p.cell)}</td><td>{p.shared}</td><td>{p.agree}</td>"
            f"<td>{len(p.disagree)}</td><td>{explained}</td><td>{len(p.unexplained)}</td>"
            f"<td>{', '.join(f'{escape(k)} {len(v)}' for k, v in p.only.items())}</td></tr>"
        )
        for pair, n in parity.table(p):
            rows.append(
                f"<tr><td></td><td colspan=6>{n} &times; lab {_badge(pair.lab)}, "
                f"{escape(pair.suite)} {_badge(pair.other)}: "
                f"{'agree' if pair.agree else '<b>differ</b>'}</td></tr>"
            )
        for d in p.disagree:
            why = escape(d.explained_by) if d.explained_by else "<b>unexplained</b>"
            rows.append(
                f"<tr><td></td><td colspan=6>{escape(d.id)}: lab {_badge(d.lab)}, "
                f"{escape(d.suite)} {_badge(d.other)} ({why})</td></tr>"
            )
    head = "<tr><th>cell</th><th>shared</th><th>agree</th><th>differ</th><th>explained</th>"
    head += "<th>unexplained</th><th>ids only one suite has</th></tr>"
    return f"<h2 id=parity>Parity</h2><table>{head}{''.join(rows)}</table>"


def _badge(outcome: str, text: str = "") -> str:
    """An outcome, or parity's `xfail(fail)`: coloured by the outcome the run reported."""
    reported = outcome.partition("(")[0]
    return f"<span class='o o-{reported}'>{escape((text or outcome).upper())}</span>"


def _cells_table(run: RunData) -> str:
    head = (
        "<tr><th>cell<th>verdict<th>counts<th>kernel<th>facts<th>boot<th>wall<th>files"
        "<th>problems</tr>"
    )
    out = []
    for cell in run.cells:
        s = cell.summary
        counts = ", ".join(f"{k} {v}" for k, v in s.get("counts", {}).items() if v)
        facts = "<br>".join(escape(f"{k}: {v}") for k, v in sorted(cell_facts(cell).items()))
        problems = [s["infra_error"]] if s.get("infra_error") else []
        problems += s.get("problems", [])
        problems += [f"warning: {w}" for w in s.get("warnings", [])]
        out.append(
            f"<tr><td>{escape(cell.name)}<td>{_badge(str(s.get('verdict')))}"
            f"<td>{escape(counts)}<td>{escape(str(s.get('kernel_release') or s.get('kernel')))}"
            f"<td class=diag>{facts}<td>{_seconds(s.get('boot_to_ssh_s'))}"
            f"<td>{_seconds(s.get('wall_s'))}<td>{_files(cell)}"
            f"<td>{''.join(f'<pre>{escape(str(p))}</pre>' for p in problems)}</tr>"
        )
    out += [
        f"<tr class=r-fail><td>{escape(name)}<td>{_badge('fail', 'missing')}<td colspan=6>"
        f"<td><pre>{escape(MISSING_WHY)}</pre></tr>"
        for name in run.missing
    ]
    return f"<table id=cells>{head}{''.join(out)}</table>"


CELL_FILES = ("console.log", "dmesg.txt", "results.tap", "payload.log", "tests.json")


def _files(cell: CellData) -> str:
    """Links to the cell's raw files, relative: the run directory moves as a whole."""
    where = Path(str(cell.summary.get("dir", ""))).name
    return " ".join(f"<a href='{escape(quote(f'{where}/{f}'))}'>{f}</a>" for f in CELL_FILES)


def _seconds(value: object) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


def _controls() -> str:
    return (
        "<div class=controls><label><input type=checkbox id=only-diff> only rows that differ"
        "</label><label><input type=checkbox id=only-unexpected> only unexpected results</label>"
        "<label>filter <input id=filter size=30></label> <span id=shown></span> shown</div>"
    )


def _matrix_table(run: RunData, rows: list[Row]) -> str:
    head = "".join(f"<th>{escape(c.name)}</th>" for c in run.cells)
    body = []
    for i, row in enumerate(rows):
        classes = " ".join(
            c for c, on in (("differs", row.differs), ("unexpected", row.unexpected)) if on
        )
        cells = "".join(_matrix_cell(rec, row.changed_keys) for rec in row.cells)
        body.append(
            f"<tr class='{classes}' data-test='{escape(row.test)}'>"
            f"<td class=test><a href='#t{i}'>{escape(row.test)}</a></td>{cells}</tr>"
        )
    return (
        f"<table id=matrix><thead><tr><th>test</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _matrix_cell(rec: TestRecord | None, keys: list[str]) -> str:
    if rec is None:
        return "<td class=r-absent>absent</td>"
    diags = rec.diagnostic_map()
    shown = "".join(
        f"<br><span class=diag>{escape(k)}: {escape(diags.get(k, '-'))}</span>" for k in keys
    )
    alarm = ""
    if notable := rec.notable_kernel:
        kinds = ", ".join(dict.fromkeys(line.partition(": ")[0] for line in notable))
        alarm = f" <span title='kernel: {escape(kinds)}'>&#9888;</span>"
    return f"<td class='r-{rec.outcome}'>{_badge(rec.outcome)}{alarm}{shown}</td>"


def _details(i: int, row: Row, run: RunData) -> str:
    parts = [f"<section id=t{i}><h3>{escape(row.test)}</h3>"]
    for cell, rec in zip(run.cells, row.cells, strict=True):
        parts.append(_cell_details(cell, rec))
    parts.append("</section>")
    return "".join(parts)


def _cell_details(cell: CellData, rec: TestRecord | None) -> str:
    if rec is None:
        return f"<details><summary>{escape(cell.name)}: absent</summary></details>"
    head = f"{escape(cell.name)}: {_badge(rec.outcome)} {escape(rec.reason)}"
    blocks = []
    if rec.expectation:
        link = rec.expectation.get("link", "")
        target = f" <a href='{escape(link)}'>{escape(link)}</a>" if link else ""
        blocks.append(f"<p>known failure: {escape(rec.expectation.get('reason', ''))}{target}</p>")
    for title, lines, css in (
        ("diagnostics", rec.diagnostics, ""),
        ("kernel alarms", rec.notable_kernel, "alarm"),
        ("dmesg while it ran", rec.dmesg, ""),
        ("console while it ran", rec.console, ""),
    ):
        if lines:
            text = escape("\n".join(lines))
            blocks.append(f"<div>{title}:<pre class='{css}'>{text}</pre></div>")
    if routine := rec.routine_kernel:
        text = escape("\n".join(routine))
        blocks.append(
            f"<details class=routine><summary>{len(routine)} routine kernel "
            f"line{'s' if len(routine) > 1 else ''}</summary><pre>{text}</pre></details>"
        )
    is_open = " open" if rec.unexpected or rec.notable_kernel else ""
    return f"<details{is_open}><summary>{head}</summary>{''.join(blocks)}</details>"
