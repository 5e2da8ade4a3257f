#!/usr/bin/env python3
"""Round-trip a notebook through a plain-text "percent" view, so cells can be written in an editor.

    python tools/nbpy.py to-py nbs/31_dahar.ipynb /tmp/31_dahar.py   # notebook -> text (outputs dropped)
    python tools/nbpy.py to-nb /tmp/31_dahar.py nbs/31_dahar.ipynb   # text -> notebook (then run nbdev_clean)

Text format: a cell starts with a line `# %%` (code), `# %% [markdown]` (markdown), optionally followed by
` tags=["parameters"]`. Markdown lines are written with a leading `# ` which is stripped on the way back.
The notebook stays the source of truth: this is an editing aid, nothing in the package reads it.
Standard library only, so it works before the environment is installed.
"""
import json, re, sys
from pathlib import Path

HEADER = re.compile(r'^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$')
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def nb_to_py(nb: dict) -> str:
    "Render notebook cells as percent-format text."
    out = []
    for c in nb['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        tags = c.get('metadata', {}).get('tags')
        head = '# %%' + (' [markdown]' if c['cell_type'] == 'markdown' else '') + (f' tags={json.dumps(tags)}' if tags else '')
        body = '\n'.join(('# ' + l if l else '#') for l in src.split('\n')) if c['cell_type'] == 'markdown' else src
        out.append(head + '\n' + body)
    return '\n\n'.join(out) + '\n'


def py_to_nb(text: str) -> dict:
    "Parse percent-format text into a notebook dict (nbformat 4.5, python3 kernel)."
    cells, cur = [], None
    for line in text.split('\n'):
        m = HEADER.match(line)
        if m:
            if cur: cells.append(cur)
            cur = dict(md=bool(m['md']), tags=json.loads(m['tags']) if m['tags'] else None, lines=[])
        elif cur is not None: cur['lines'].append(line)
    if cur: cells.append(cur)
    nb_cells = []
    for i, c in enumerate(cells):
        lines = c['lines']
        while lines and not lines[-1].strip(): lines.pop()
        if c['md']: lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
        src = '\n'.join(lines)
        meta = {'tags': c['tags']} if c['tags'] else {}
        cell = dict(cell_type='markdown' if c['md'] else 'code', id=f'c{i:03d}', metadata=meta,
                    source=src.splitlines(keepends=True))
        if not c['md']: cell.update(execution_count=None, outputs=[])
        nb_cells.append(cell)
    return dict(cells=nb_cells, metadata={'kernelspec': KERNEL, 'language_info': {'name': 'python'}},
                nbformat=4, nbformat_minor=5)


if __name__ == '__main__':
    if len(sys.argv) != 4 or sys.argv[1] not in ('to-py', 'to-nb'): sys.exit(__doc__)
    cmd, src, dst = sys.argv[1:]
    if cmd == 'to-py': Path(dst).write_text(nb_to_py(json.loads(Path(src).read_text())))
    else: Path(dst).write_text(json.dumps(py_to_nb(Path(src).read_text()), indent=1, ensure_ascii=False) + '\n')
